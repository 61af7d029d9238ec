"""The relay: ``mllm-monitor relay``, the sidecar without the monitor behind it.

It proxies the OpenAI-compatible API to ``[proxy] upstream`` as the full sidecar does
(:mod:`monitor.ingest.proxy`), samples the chat exchanges under the stream's sampling and rate
cap, and forwards the sampled records in batches to the records API of central replicas
(``[relay] central_url``), which embed them and compute the windows. It imports neither torch,
transformers, FAISS nor the store.

* :mod:`monitor.relay.records`: a complete exchange to one records-API JSON line, or skipped;
* :mod:`monitor.relay.spool`: the bounded spool of lines waiting to be forwarded (memory, plus
  JSONL segments on disk when ``[relay] spool_dir`` is set);
* :mod:`monitor.relay.forwarder`: batches from the spool posted to ``POST /v1/records``, with
  retries and backoff;
* :mod:`monitor.relay.sampler`: what the proxy offers exchanges to;
* :mod:`monitor.relay.app`: the ASGI app (proxy routes, ``/healthz``, ``/readyz``,
  ``/metrics``) and :func:`~monitor.relay.app.serve_relay`.
"""
