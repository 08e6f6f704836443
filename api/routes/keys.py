"""The calling API key: its name and scopes, so that a client (the live map) offers its user only
what the key may do. Any valid key may read its own record; nothing secret is returned."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from api.auth import api_key
from api.problems import PROBLEM_RESPONSES
from telemetry.store import ApiKey

router = APIRouter(tags=["health"], responses=PROBLEM_RESPONSES)


class KeyInfo(BaseModel):
    name: str
    scopes: list[str]


@router.get("/v1/key", response_model=KeyInfo, summary="The calling key's name and scopes")
async def calling_key(key: Annotated[ApiKey, Depends(api_key)]) -> KeyInfo:
    return KeyInfo(name=key.name, scopes=sorted(key.scopes))
