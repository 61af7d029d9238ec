"""How traffic gets in: the records API, late references, health/readiness/metrics routes.

* :func:`monitor.ingest.app.create_app` builds the one ASGI app (FastAPI).
* :class:`monitor.ingest.service.IngestService` samples, caps and durably enqueues records.
* :func:`monitor.ingest.parsing.parse_record` turns a JSON record (or OpenAI messages) into a
  :class:`~monitor.records.TrafficRecord`; shared by the API, the sidecar and the CLI.
* :mod:`monitor.ingest.image_urls` fetches allowed image URLs without SSRF.
* :class:`monitor.ingest.readiness.Readiness` holds the named checks of ``/readyz``.
"""
