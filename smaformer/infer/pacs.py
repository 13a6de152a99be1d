"""Predict from a hospital archive (PACS) and store the DICOM SEG back there, over DICOMweb (dicomweb-client)
or DIMSE (``infer.dimse``).

- ``predict -i <base>/studies/<StudyUID>/series/<SeriesUID>`` reads one series over WADO-RS;
  ``-i <base>/studies/<StudyUID>`` reads each image series of the study (found with QIDO-RS).
- ``--store <base>`` sends each DICOM SEG over STOW-RS after it is written locally, then looks it up with
  QIDO-RS (an archive may answer success and drop it). A SEG is one instance with a new SeriesInstanceUID
  every run, so a store is whole or nothing and never replaces anything there.
- Credentials never come from the command line: ``SMAFORMER_PACS_USER`` + ``SMAFORMER_PACS_PASSWORD`` (HTTP
  basic) or ``SMAFORMER_PACS_TOKEN`` (bearer), or ``SMAFORMER_PACS_AUTH_FILE`` naming a JSON file with
  ``{"user", "password"}`` or ``{"token"}``. TLS is verified; ``SMAFORMER_PACS_CA_BUNDLE`` names a private CA.

A series that cannot be fetched (server down, wrong password, a SEG/SR/localizer instead of images) or whose
SEG is refused is one line naming the series and the reason; the batch goes on with the others.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

from smaformer.errors import InputError
from smaformer.infer.series_check import NOT_IMAGES, check_image_series

URL = re.compile(r"^(?P<base>https?://.+?)/studies/(?P<study>[0-9.]+)(?:/series/(?P<series>[0-9.]+))?/?$")
_TAG_SERIES, _TAG_MODALITY = "0020000E", "00080060"


def is_dicomweb(text: str | Path) -> bool:
    return str(text).startswith(("http://", "https://"))


def parse_url(url: str) -> tuple[str, str, str | None]:
    """``(base, StudyInstanceUID, SeriesInstanceUID or None)`` of a DICOMweb study or series URL."""
    m = URL.match(url)
    if not m:
        raise InputError(url, "not a DICOMweb study or series URL (<base>/studies/<StudyUID>[/series/<SeriesUID>])")
    return m["base"], m["study"], m["series"]


def check_store(store: str | None, output_type: str) -> None:
    """``--store`` sends DICOM objects: refuse it, before any work, for another output type."""
    from smaformer.infer.predict import DICOM_OUTPUTS

    if store and output_type not in DICOM_OUTPUTS:
        raise InputError(store, "--store sends DICOM objects: add --output-type dicom-seg (or dicom-rtstruct)")


def _credentials() -> tuple[tuple[str, str] | None, str | None]:
    """(basic auth, bearer token) from the environment or the auth file named there."""
    env = os.environ
    if env.get("SMAFORMER_PACS_AUTH_FILE"):
        path = Path(env["SMAFORMER_PACS_AUTH_FILE"])
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise InputError(path, f"PACS auth file unreadable ({type(e).__name__}); expected JSON with user and "
                                   "password, or token") from None
        if not isinstance(doc, dict):
            raise InputError(path, "PACS auth file: expected a JSON object with user and password, or token")
        user, password, token = doc.get("user"), doc.get("password"), doc.get("token")
    else:
        user, password, token = (env.get(k) for k in ("SMAFORMER_PACS_USER", "SMAFORMER_PACS_PASSWORD",
                                                       "SMAFORMER_PACS_TOKEN"))
    if user and password is None:
        raise InputError(None, "a PACS user without a password: set SMAFORMER_PACS_PASSWORD (or password in the "
                               "auth file)")
    return ((str(user), str(password)) if user else None), token


def web_client(base: str):
    """A ``DICOMwebClient`` for ``base`` with the credentials and TLS settings of the environment."""
    import requests
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    basic, token = _credentials()
    if basic:
        session.auth = basic
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    session.verify = os.environ.get("SMAFORMER_PACS_CA_BUNDLE") or True
    client = DICOMwebClient(url=base, session=session)
    client.set_http_retry_params(retry=False)     # a failure is reported at once, in one line (no traceback logs)
    return client


def reason(e: Exception) -> str:
    """One line for a failed archive request: down, refused (with the HTTP status), or what else it was."""
    import requests

    if isinstance(e, requests.exceptions.SSLError):
        return "TLS certificate not trusted (set SMAFORMER_PACS_CA_BUNDLE to your CA)"
    if isinstance(e, requests.exceptions.ConnectionError):
        return "server not reachable (down, or a wrong address)"
    if isinstance(e, requests.exceptions.Timeout):
        return "server did not answer in time"
    status = getattr(getattr(e, "response", None), "status_code", None)
    if status in (401, 403):
        return f"refused: HTTP {status} (wrong or missing credentials: SMAFORMER_PACS_USER/PASSWORD or TOKEN)"
    if status is not None:
        return f"refused: HTTP {status}"
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


class WebArchive:
    """A DICOMweb peer with the interface of ``infer.dimse.Archive``: ``find_series``, ``get_series``, ``store``."""

    def __init__(self, url: str, base_only: bool = False):
        if base_only:
            self.base, self.study, self.series = url.rstrip("/"), None, None
        else:
            self.base, self.study, self.series = parse_url(url)
        self.client = web_client(self.base)

    def find_series(self, study: str) -> list[str]:
        """The study's series that hold images (QIDO-RS), in the archive's order."""
        try:
            found = self.client.search_for_series(study_instance_uid=study)
            return [s[_TAG_SERIES]["Value"][0] for s in found
                    if (s.get(_TAG_MODALITY, {}).get("Value") or [""])[0] not in NOT_IMAGES]
        except (KeyError, IndexError, TypeError, AttributeError):
            raise InputError(f"study {study}", "the archive's QIDO-RS answer lists a series without its "
                                               "SeriesInstanceUID") from None
        except Exception as e:  # noqa: BLE001 - any failure of the request is one line for the user
            raise InputError(f"study {study}", reason(e)) from None

    def get_series(self, study: str, series: str, folder: Path) -> Path:
        """The series' instances (WADO-RS) as files in ``folder``; a non-image series or a localizer is refused."""
        try:
            instances = self.client.retrieve_series(study_instance_uid=study, series_instance_uid=series)
        except Exception as e:  # noqa: BLE001 - any failure of the request is one line for the user
            raise InputError(f"series {series}", reason(e)) from None
        check_image_series(instances, series)
        folder.mkdir(parents=True)
        for i, ds in enumerate(instances):
            ds.save_as(folder / f"{i:05d}.dcm", enforce_file_format=True)
        return folder

    def store(self, path: Path, series: str) -> None:
        """STOW-RS of one written SEG, then a QIDO-RS look-up (an archive may answer success and still drop it,
        as Orthanc's instance filter does); a refusal is one line naming the series."""
        import pydicom

        seg = pydicom.dcmread(path)
        try:
            answer = self.client.store_instances([seg])
            failed = getattr(answer, "FailedSOPSequence", None)
            held = not failed and self.client.search_for_instances(
                study_instance_uid=seg.StudyInstanceUID, search_filters={"SOPInstanceUID": seg.SOPInstanceUID})
        except Exception as e:  # noqa: BLE001 - any failure of the request is one line for the user
            raise InputError(f"series {series}", f"not stored: {reason(e)}") from None
        if failed:
            why = getattr(failed[0], "FailureReason", "?")
            raise InputError(f"series {series}", f"not stored: refused by the archive (STOW-RS failure "
                                                 f"reason {why})")
        if not held:
            raise InputError(f"series {series}", "not stored: refused by the archive (it answered success, but "
                                                 "a query finds no such instance there)")


def archive(url: str, base_only: bool = False, ae_title: str | None = None):
    """The peer of a ``http(s)://`` DICOMweb URL or a ``dimse://`` address (``ae_title``: ours, for DIMSE)."""
    from smaformer.infer.dimse import Archive, is_dimse

    if not is_archive(url):
        raise InputError(url, "not an archive address: a DICOMweb URL (http(s)://...) or dimse://AET@host:port")
    return Archive(url, ae_title) if is_dimse(url) else WebArchive(url, base_only)


def is_archive(text: str | Path) -> bool:
    from smaformer.infer.dimse import is_dimse

    return is_dicomweb(text) or is_dimse(text)


def predict_and_store(inp: str | Path, output: str | Path, checkpoint, *, store: str | None = None,
                      ae_title: str | None = None, log: Callable[[str], None] = print, **kwargs) -> list:
    """``infer.predict.predict`` on local files or on an archive's study/series (DICOMweb or DIMSE), and with
    ``store`` each written SEG/RTSTRUCT sent to that archive as soon as it is written (a refusal becomes that
    case's error, in one line, and in the summary). ``ae_title``: ours over DIMSE. Returns the CaseResults,
    failed series included."""
    from smaformer.infer.predict import CaseResult, predict
    from smaformer.io_utils import check_output

    check_store(store, kwargs.get("output_type", "nifti"))
    source = archive(inp, ae_title=ae_title) if is_archive(inp) else None
    target = archive(store, base_only=True, ae_title=ae_title) if store else None   # a bad address: before the work

    def deliver(result) -> None:
        target.store(result.output, Path(str(result.source)).name)
        log(f"stored {result.output.name} at {store}")

    kwargs.update(log=log, deliver=deliver if target is not None else None)
    if source is None:
        return predict(inp, output, checkpoint, **kwargs)
    if source.study is None:
        raise InputError(inp, "give a study (and optionally a series) to segment")
    single = source.series is not None
    check_output(output, folder=not single and not str(output).endswith(".dcm"))
    wanted = [source.series] if single else source.find_series(source.study)
    if not wanted:
        raise InputError(inp, "the study holds no image series")
    results, fetched = [], {}
    with tempfile.TemporaryDirectory(prefix="smaformer-pacs-") as tmp:
        for uid in wanted:
            try:
                fetched[uid] = source.get_series(source.study, uid, Path(tmp) / uid)
            except InputError as e:
                log(f"FAILED {e}")
                results.append(CaseResult(Path(uid), error=str(e)))
        if fetched:
            results += predict(next(iter(fetched.values())) if single else Path(tmp), output, checkpoint, **kwargs)
    return results
