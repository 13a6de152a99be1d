-- Orthanc Lua: segment each new image series when it is complete ("stable"), and store the SEG back.
-- Tested by tests/infer/test_pacs.py::test_orthanc_segments_a_new_series_by_itself. Set in Orthanc's environment:
--   SMAFORMER_BIN        the smaformer executable (e.g. /opt/smaformer/.venv/bin/smaformer)
--   SMAFORMER_CKPT       the checkpoint (e.g. /opt/models/best.pt)
--   SMAFORMER_OUT        a folder for the local copies of the SEGs (and predict.json logs)
--   SMAFORMER_DICOMWEB   this Orthanc's DICOMweb root (default http://127.0.0.1:8042/dicom-web)
--   SMAFORMER_PACS_USER / SMAFORMER_PACS_PASSWORD   a user of this Orthanc (RegisteredUsers)
-- and "StableAge" in orthanc.json: seconds without a new instance before a series counts as complete.

-- the modalities smaformer.infer.series_check.NOT_IMAGES skips: series with no image to segment
local skip = { SEG = true, SR = true, RTSTRUCT = true, RTPLAN = true, RTDOSE = true, RTRECORD = true, PR = true,
               KO = true, DOC = true, REG = true, FID = true, OT = true }

function OnStableSeries(seriesId, tags, metadata)
  if skip[tags['Modality'] or ''] then
    return
  end
  local study = ParseJson(RestApiGet('/series/' .. seriesId .. '/study'))['MainDicomTags']['StudyInstanceUID']
  local series = tags['SeriesInstanceUID']
  local root = os.getenv('SMAFORMER_DICOMWEB') or 'http://127.0.0.1:8042/dicom-web'
  local out = os.getenv('SMAFORMER_OUT')
  local cmd = string.format(
    '"%s" predict -i "%s/studies/%s/series/%s" -o "%s/%s.dcm" -c "%s" --output-type dicom-seg --store "%s" ' ..
    '--quiet >> "%s/smaformer.log" 2>&1 &',
    os.getenv('SMAFORMER_BIN'), root, study, series, out, series, os.getenv('SMAFORMER_CKPT'), root, out)
  print('smaformer: segmenting series ' .. series)
  os.execute(cmd)   -- in the background: Orthanc's Lua thread is not held while the model runs
end
