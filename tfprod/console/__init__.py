"""The web console at /ui/ on the REST port: models, versions, rollouts, live metrics and lineage.

A static page (static/) reads the server's JSON (routes.py) and draws with the vendored uPlot
(static/vendor: npm uplot 1.6.32, MIT, LICENSE beside it); nothing is fetched from the internet.
"""
