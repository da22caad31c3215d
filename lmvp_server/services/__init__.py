"""The service layer: what the API's routers and the web console's pages both call.

One module per resource (`projects`, `members`, `models`, `versions`, `aliases`, `history`,
`runs`, `blobs`, `tokens`, `users`), `console` for what only the web console's pages read, and
`access`, the preamble every call starts with (the caller, their role in a project, the model,
recording an event in the caller's name). Services are plain typed functions over a SQLAlchemy
session: no FastAPI or Starlette in them (tests/server/test_layers.py checks); settings and
caches they need are passed in. What goes wrong is raised as `lmvp_server.errors.APIError`
(status, stable code, a message saying what to do), which the app's handlers turn into the JSON
error body and the console into its error page.
"""
