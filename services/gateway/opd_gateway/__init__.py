"""opd's HTTP gateway: the teacher's view of any text, over JSON and a web page (no torch).

`create_app(settings)` (in `opd_gateway.app`) builds the FastAPI app; `opd-gateway`
(`opd_gateway.cli`) serves it with uvicorn. This package imports no model library.
"""
