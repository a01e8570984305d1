"""One settings object for the whole service: every field is ``CRMSYNC_<NAME>``."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# standalone: one Redis server; cluster: a Redis Cluster, CRMSYNC_REDIS_URL names a seed node.
RedisMode = Literal["standalone", "cluster"]
REDIS_MODES: tuple[RedisMode, ...] = ("standalone", "cluster")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CRMSYNC_", extra="ignore")

    database_url: str = "postgresql://127.0.0.1:5432/crmsync"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_mode: RedisMode = "standalone"
    # Comma-separated bootstrap admin keys of the HTTP API (more keys: `crmsync keys`).
    api_keys: str = Field(default="", repr=False)
    # Seconds the API trusts a verified key before reading it again (a revoke
    # takes effect within this time).
    api_key_cache_seconds: float = Field(default=5.0, ge=0, le=300)
    # Base64 of 32 bytes (comma-separated: the first encrypts, every one decrypts):
    # the key CRM credentials are encrypted with in PostgreSQL.
    secret_key: str = Field(default="", repr=False)
    # 1: GET /metrics answers without a key (with every tenant's series).
    metrics_public: bool = False
    # Seconds /metrics reuses the status aggregates it computed.
    metrics_cache_seconds: float = Field(default=5.0, ge=0, le=300)
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8080, ge=1, le=65535)
    log_level: str = "info"
    log_json: bool = False

    # Records per CRM request: 1 = one record per request (the seed design).
    batch_size: int = Field(default=1, ge=1, le=200)
    retry_attempts: int = Field(default=3, ge=1, le=100)
    retry_base_seconds: float = Field(default=1.0, gt=0)
    retry_cap_seconds: float = Field(default=60.0, gt=0)
    breaker_threshold: int = Field(default=5, ge=1)
    breaker_recovery_seconds: float = Field(default=30.0, gt=0)
    lease_seconds: float = Field(default=30.0, gt=0)
    # Extra fraction added to every rate-limit window: the CRM counts arrivals,
    # which jitter relative to our admissions.
    limit_margin: float = Field(default=0.04, ge=0, le=0.5)
    http_timeout_seconds: float = Field(default=10.0, gt=0)
    # The longest a CRM's answer may hold a connection back (Retry-After, quota
    # headers): a CRM asking for more gets this much; `connections resume` ends it.
    max_block_seconds: float = Field(default=3600.0, gt=0, le=86_400 * 7)
    # A CRM's answer body longer than this is an error (retried), not read.
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=64 * 1024, le=1024**3)
    # A request body to the HTTP API longer than this is refused with 413 before
    # it is parsed (a batch of 1000 contacts at their largest fields fits, as UTF-8).
    api_max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=64 * 1024, le=1024**3)
    worker_processes: int = Field(default=1, ge=1, le=256)
    worker_concurrency: int = Field(default=200, ge=1, le=10000)
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    relay_batch: int = Field(default=5000, ge=1)
    relay_poll_seconds: float = Field(default=1.0, gt=0)

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        v = v.lower()
        if v not in {"debug", "info", "warning", "error"}:
            raise ValueError("CRMSYNC_LOG_LEVEL must be one of debug, info, warning, error")
        return v

    @field_validator("redis_mode", mode="before")
    @classmethod
    def _redis_mode(cls, v: object) -> object:
        mode = str(v).strip().lower()
        if mode not in REDIS_MODES:
            raise ValueError(
                "CRMSYNC_REDIS_MODE must be standalone (one Redis server) or cluster "
                "(a Redis Cluster; CRMSYNC_REDIS_URL names one of its nodes)"
            )
        return mode

    @property
    def api_key_set(self) -> frozenset[str]:
        return frozenset(k.strip() for k in self.api_keys.split(",") if k.strip())


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
