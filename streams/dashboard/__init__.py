"""The dashboard served by the API (``GET /dashboard``): live alerts with reason codes, throughput and latency,
decisions by outcome, dead letters, drift per feature, the model in force and its promotion history.

- :mod:`streams.dashboard.figures`: the numbers (pure: exposition text in, snapshots, rates, quantiles out);
- :mod:`streams.dashboard.sources`: what it reads (Prometheus endpoints, the Redis alert stream), with twins;
- :mod:`streams.dashboard.routes`: the page and its JSON endpoints on the API;
- ``page.html``, ``app.js``, ``style.css``: the page, self-contained (no CDN, no build step).
"""
