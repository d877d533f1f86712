"""The OpenAI-compatible HTTP server (FastAPI + uvicorn) behind `mistralrs serve`."""
from mistralrs.server.app import create_app
from mistralrs.server.config import ServerConfig
from mistralrs.server.serve import serve

__all__ = ["ServerConfig", "create_app", "serve"]
