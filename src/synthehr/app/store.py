"""The feedback store: saved scenarios, the review queue, reviews and promoted audit rules.

SQLAlchemy; SQLite by default (a file in the user's data folder), PostgreSQL by URL. The schema is
owned by Alembic (synthehr/app/migrations) and upgraded to the latest revision when the server starts.

SQLite runs in WAL mode with synchronous=FULL: a transaction is either fully in the file or absent,
even when the server is killed mid-request, and an acknowledged write survives the kill.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import (JSON, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint, create_engine,
                        event, inspect)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(dt: datetime | None) -> str | None:
    """ISO 8601 in UTC with its offset (SQLite returns stored times without a zone; they are UTC)."""
    if dt is None:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).isoformat()


class Base(DeclarativeBase):
    pass


class Scenario(Base):
    """A clinician's criteria + generation settings; re-running it gives the same records (fixed seed)."""

    __tablename__ = "scenarios"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    model_id: Mapped[str] = mapped_column(String(200))
    criteria: Mapped[list] = mapped_column(JSON)
    unit: Mapped[str] = mapped_column(String(16), default="rows")
    n: Mapped[int] = mapped_column(Integer)
    seed: Mapped[int] = mapped_column(Integer, default=0)
    created_by: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_run_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    run_count: Mapped[int] = mapped_column(Integer, default=0)


class ReviewRecord(Base):
    """One synthetic record waiting for (or having) clinician reviews. record_key identifies its content."""

    __tablename__ = "review_records"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    record_key: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    source: Mapped[str] = mapped_column(String(200))       # model id
    model_type: Mapped[str] = mapped_column(String(64), default="")
    origin: Mapped[str] = mapped_column(String(200), default="")  # "sample seed=3", "scenario 2"
    record_values: Mapped[dict] = mapped_column(JSON)
    findings: Mapped[list] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    n_reviews: Mapped[int] = mapped_column(Integer, default=0)   # kept in the same transaction as reviews
    n_flags: Mapped[int] = mapped_column(Integer, default=0)
    reviews: Mapped[list["Review"]] = relationship(back_populates="record", cascade="all, delete-orphan")


class Review(Base):
    """One reviewer's decision on one record (a later decision by the same reviewer replaces it)."""

    __tablename__ = "reviews"
    __table_args__ = (UniqueConstraint("record_id", "reviewer", name="uq_review_record_reviewer"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    record_id: Mapped[int] = mapped_column(ForeignKey("review_records.id", ondelete="CASCADE"), index=True)
    reviewer: Mapped[str] = mapped_column(String(100))
    decision: Mapped[str] = mapped_column(String(8))  # accept | flag
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    record: Mapped[ReviewRecord] = relationship(back_populates="reviews")


class AuditRule(Base):
    """A flagged pattern promoted into an audit rule (also written to the user rule file)."""

    __tablename__ = "audit_rules"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rule_id: Mapped[str] = mapped_column(String(64), unique=True)
    review_id: Mapped[int | None] = mapped_column(ForeignKey("reviews.id", ondelete="SET NULL"), nullable=True)
    pattern: Mapped[str] = mapped_column(Text)
    severity: Mapped[str] = mapped_column(String(16))
    rationale: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    match_rate: Mapped[float | None] = mapped_column(Float, nullable=True)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def make_engine(url: str) -> Engine:
    """Engine for `url`; SQLite files get their folder created and WAL/synchronous=FULL/foreign keys on."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Run the Alembic migrations up to `revision` on `engine` (programmatic; no alembic.ini needed)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def open_store(url: str) -> tuple[Engine, sessionmaker]:
    """Engine + session factory for `url`, schema upgraded to the latest revision."""
    engine = make_engine(url)
    upgrade(engine)
    return engine, sessionmaker(engine, expire_on_commit=False)


def current_revision(engine: Engine) -> str | None:
    if "alembic_version" not in inspect(engine).get_table_names():
        return None
    with engine.connect() as conn:
        return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
