"""PACS services: DICOM listener, spool, sender, Orthanc poller and batch runs (local or Dask)."""
