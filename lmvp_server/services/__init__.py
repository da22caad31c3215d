"""The service layer: what the API's routers and the web console's pages both call.

One module per resource (`projects`, `members`, `models`, `versions`, `aliases`, `history`,
`runs`, `tokens`), plus `access`, the preamble every call starts with (the caller, their role in
a project, the model). Services are plain typed functions over a SQLAlchemy session: no FastAPI
or Starlette in them (tests/server/test_layers.py checks), and what goes wrong is raised as
`lmvp_server.errors.APIError`, which the app's handlers turn into the JSON error body and the
console into its error page.
"""
