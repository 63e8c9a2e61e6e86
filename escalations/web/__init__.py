"""The staff web interface: sign-in, sessions, audit and the pages (Starlette, Jinja2, uvicorn).

Import :func:`escalations.web.app.create_web_app` for the ASGI app; this package itself imports
nothing, so settings and the schema can name its roles and tables without loading Starlette."""
