"""App factories for uvicorn: ``uvicorn services.app:tier3 --factory --port 8003``."""

from fastapi import FastAPI

from services.framework.app import create_app

__all__ = ["tier1", "tier2", "tier3", "tier4"]


def tier1() -> FastAPI:
    return create_app("tier1")


def tier2() -> FastAPI:
    return create_app("tier2")


def tier3() -> FastAPI:
    return create_app("tier3")


def tier4() -> FastAPI:
    return create_app("tier4")
