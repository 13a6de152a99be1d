"""Predict from an archive without DICOMweb and store back, over DIMSE (pynetdicom): C-FIND, C-GET, C-STORE.

- ``predict -i dimse://AET@host:port/<StudyUID>[/<SeriesUID>]`` finds the study's image series (C-FIND) and
  retrieves each with C-GET (the archive sends the instances back over the same association);
- ``--store dimse://AET@host:port`` sends each DICOM SEG with C-STORE, then looks it up with C-FIND.
Our AE title is ``SMAFORMER`` (``--ae-title`` or ``SMAFORMER_AE_TITLE`` changes it); the archive must know it (Orthanc:
``DicomModalities``). A failure is one line naming the series, as over DICOMweb (``infer.pacs``).
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from smaformer.errors import InputError

URL = re.compile(r"^dimse://(?P<aet>[^@/]{1,16})@(?P<host>[^:/]+):(?P<port>\d+)(?:/(?P<study>[0-9.]+)"
                 r"(?:/(?P<series>[0-9.]+))?)?/?$")


#: what DICOM allows in an AE title that every archive accepts (no backslash or control characters, not all blank)
AE_TITLE = re.compile(r"^(?! *$)[A-Za-z0-9 _-]{1,16}$")


def is_dimse(text) -> bool:
    return str(text).startswith("dimse://")


def parse_url(url: str) -> tuple[str, str, int, str | None, str | None]:
    """``(called AE title, host, port, StudyUID or None, SeriesUID or None)``."""
    m = URL.match(str(url))
    if not m:
        raise InputError(url, "not a DIMSE address (dimse://AET@host:port[/<StudyUID>[/<SeriesUID>]])")
    return m["aet"], m["host"], int(m["port"]), m["study"], m["series"]


class Archive:
    """One DIMSE peer: ``find_series``, ``get_series``, ``store``; each opens its own association."""

    def __init__(self, url: str, ae_title: str | None = None):
        self.aet, self.host, self.port, self.study, self.series = parse_url(url)
        self.ours = ae_title or os.environ.get("SMAFORMER_AE_TITLE") or "SMAFORMER"
        if not AE_TITLE.match(self.ours):
            raise InputError(url, f"our AE title {self.ours!r} is not 1-16 characters of letters, digits, "
                                  "space, _ or -")

    def _associate(self, what: str, contexts, roles=(), handlers=()):
        from pynetdicom import AE

        ae = AE(ae_title=self.ours)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        for cx in contexts:
            ae.add_requested_context(cx)
        assoc = ae.associate(self.host, self.port, ae_title=self.aet, ext_neg=list(roles), evt_handlers=list(handlers))
        if not assoc.is_established:
            raise InputError(what, f"no association with {self.aet}@{self.host}:{self.port} (server down, or it does "
                                   f"not accept AE title {self.ours})")
        return assoc

    def find_series(self, study: str) -> list[str]:
        """The study's image series (C-FIND at SERIES level)."""
        from pydicom.dataset import Dataset
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

        from smaformer.infer.series_check import NOT_IMAGES
        q = Dataset()
        q.QueryRetrieveLevel, q.StudyInstanceUID, q.SeriesInstanceUID, q.Modality = "SERIES", study, "", ""
        assoc = self._associate(f"study {study}", [StudyRootQueryRetrieveInformationModelFind])
        found, final = [], None
        try:
            for status, ident in assoc.send_c_find(q, StudyRootQueryRetrieveInformationModelFind):
                final = status.Status if status else None
                if final in (0xFF00, 0xFF01) and ident is not None:
                    if str(ident.get("Modality", "")) not in NOT_IMAGES:
                        found.append(str(ident.SeriesInstanceUID))
        finally:
            assoc.release()
        if final != 0x0000:          # no final status: the archive aborted or timed out, not "no series"
            why = "no answer" if final is None else f"status 0x{final:04X}"
            raise InputError(f"study {study}", f"C-FIND refused or incomplete ({why})")
        return found

    def get_series(self, study: str, series: str, folder: Path) -> Path:
        """The series' instances (C-GET) as files in ``folder``; a non-image series is refused."""
        from pydicom.dataset import Dataset
        from pynetdicom import StoragePresentationContexts, build_role, evt
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

        from smaformer.infer.series_check import check_image_series
        got = []

        def keep(event):
            ds = event.dataset
            ds.file_meta = event.file_meta
            ds.save_as(folder / f"{len(got):05d}.dcm", enforce_file_format=True)
            got.append(ds)
            return 0x0000

        storage = [cx.abstract_syntax for cx in StoragePresentationContexts][:120]
        roles = [build_role(uid, scp_role=True) for uid in storage]
        assoc = self._associate(f"series {series}", [StudyRootQueryRetrieveInformationModelGet, *storage], roles,
                                [(evt.EVT_C_STORE, keep)])
        q = Dataset()
        q.QueryRetrieveLevel, q.StudyInstanceUID, q.SeriesInstanceUID = "SERIES", study, series
        final = None
        try:
            folder.mkdir(parents=True)
            try:
                for status, _ in assoc.send_c_get(q, StudyRootQueryRetrieveInformationModelGet):
                    final = status.Status if status else None
            finally:
                assoc.release()
            if final != 0x0000:      # a warning (0xB000) means some instances did not arrive: no partial series
                why = (f"no answer: does {self.aet} allow C-GET for AE title {self.ours}?" if final is None
                       else f"status {hex(final)}")
                raise InputError(f"series {series}", f"C-GET incomplete or refused ({why}; {len(got)} received)")
            check_image_series(got, series)
        except BaseException as e:
            shutil.rmtree(folder, ignore_errors=True)    # nothing of a failed series is left to be segmented
            if isinstance(e, (OSError, ValueError)):     # an instance that cannot be written: this series fails
                raise InputError(f"series {series}", f"C-GET: {e}") from None
            raise
        return folder

    def store(self, path: Path, series: str) -> None:
        """C-STORE of one SEG (or RTSTRUCT), then a C-FIND for it: a rejection is one line naming the series."""
        import pydicom
        from pydicom.dataset import Dataset
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

        seg = pydicom.dcmread(path)
        assoc = self._associate(f"series {series}", [seg.SOPClassUID, StudyRootQueryRetrieveInformationModelFind])
        try:
            try:
                status = assoc.send_c_store(seg)
            except ValueError:       # no accepted presentation context for this SOP class
                raise InputError(f"series {series}", f"not stored: {self.aet} accepts no {seg.SOPClassUID.name} "
                                                     "(C-STORE)") from None
            q = Dataset()
            q.QueryRetrieveLevel, q.StudyInstanceUID = "IMAGE", seg.StudyInstanceUID
            q.SeriesInstanceUID, q.SOPInstanceUID = seg.SeriesInstanceUID, seg.SOPInstanceUID
            held = any(s and s.Status in (0xFF00, 0xFF01) for s, _ in
                       assoc.send_c_find(q, StudyRootQueryRetrieveInformationModelFind))
        finally:
            assoc.release()
        code = getattr(status, "Status", None)
        if code != 0x0000:
            raise InputError(f"series {series}", f"not stored: C-STORE rejected (status "
                                                 f"{'none' if code is None else hex(code)})")
        if not held:
            raise InputError(f"series {series}", "not stored: rejected by the archive (C-STORE answered "
                                                 "success, but C-FIND finds no such instance there)")
