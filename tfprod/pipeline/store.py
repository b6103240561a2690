"""The metadata and lineage store: ML Metadata's data model on SQLAlchemy.

Artifacts (a URI and properties: what a component wrote), executions (one run of a component,
with its cache key), contexts (a pipeline, one run of it), events (an artifact as an execution's
input or output, under a role name), attributions and associations (what belongs to which
context). SQLite by default (`sqlite:///PATH`, WAL and a busy timeout, so concurrent readers and
writers from several processes wait instead of failing with "database is locked"), PostgreSQL or
anything else SQLAlchemy speaks with a URL.

Written by hand because ML Metadata itself has no Linux wheels for Python 3.11 (only its model is
kept: the same nouns, so MLMD users read lineage the same way).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

BUSY_TIMEOUT_MS = 30_000
INPUT, OUTPUT = "INPUT", "OUTPUT"


class _Base(DeclarativeBase):
    pass


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class ArtifactRow(_Base):
    __tablename__ = "artifacts"
    id: Mapped[int] = mapped_column(primary_key=True)
    type: Mapped[str] = mapped_column(sa.String(100), index=True)
    uri: Mapped[str] = mapped_column(sa.Text)
    properties: Mapped[str] = mapped_column(sa.Text, default="{}")
    created_at: Mapped[datetime.datetime] = mapped_column(sa.DateTime(timezone=True), default=_now)


class ExecutionRow(_Base):
    __tablename__ = "executions"
    id: Mapped[int] = mapped_column(primary_key=True)
    type: Mapped[str] = mapped_column(sa.String(100), index=True)  # the component's class
    component: Mapped[str] = mapped_column(sa.String(200), index=True)  # its id in the pipeline
    state: Mapped[str] = mapped_column(sa.String(20))  # RUNNING COMPLETE CACHED FAILED
    cache_key: Mapped[str] = mapped_column(sa.String(64), index=True, default="")
    properties: Mapped[str] = mapped_column(sa.Text, default="{}")
    started_at: Mapped[datetime.datetime] = mapped_column(sa.DateTime(timezone=True), default=_now)
    ended_at: Mapped[datetime.datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)


class ContextRow(_Base):
    __tablename__ = "contexts"
    __table_args__ = (sa.UniqueConstraint("type", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    type: Mapped[str] = mapped_column(sa.String(100))  # pipeline | pipeline_run
    name: Mapped[str] = mapped_column(sa.String(300))
    properties: Mapped[str] = mapped_column(sa.Text, default="{}")
    created_at: Mapped[datetime.datetime] = mapped_column(sa.DateTime(timezone=True), default=_now)


class EventRow(_Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(primary_key=True)
    artifact_id: Mapped[int] = mapped_column(sa.ForeignKey("artifacts.id"), index=True)
    execution_id: Mapped[int] = mapped_column(sa.ForeignKey("executions.id"), index=True)
    kind: Mapped[str] = mapped_column(sa.String(10))  # INPUT | OUTPUT
    role: Mapped[str] = mapped_column(sa.String(100))
    at: Mapped[datetime.datetime] = mapped_column(sa.DateTime(timezone=True), default=_now)


class AttributionRow(_Base):
    __tablename__ = "attributions"
    context_id: Mapped[int] = mapped_column(sa.ForeignKey("contexts.id"), primary_key=True)
    artifact_id: Mapped[int] = mapped_column(sa.ForeignKey("artifacts.id"), primary_key=True)


class AssociationRow(_Base):
    __tablename__ = "associations"
    context_id: Mapped[int] = mapped_column(sa.ForeignKey("contexts.id"), primary_key=True)
    execution_id: Mapped[int] = mapped_column(sa.ForeignKey("executions.id"), primary_key=True)


@dataclasses.dataclass
class Artifact:
    """An artifact as components see it: a type, a URI and JSON properties."""

    type: str
    uri: str
    properties: dict[str, Any] = dataclasses.field(default_factory=dict)
    id: int | None = None


def _artifact(row: ArtifactRow) -> Artifact:
    return Artifact(row.type, row.uri, json.loads(row.properties), row.id)


@dataclasses.dataclass(frozen=True)
class Execution:
    id: int
    type: str
    component: str
    state: str
    cache_key: str
    properties: dict[str, Any]
    started_at: datetime.datetime
    ended_at: datetime.datetime | None


def _execution(row: ExecutionRow) -> Execution:
    return Execution(row.id, row.type, row.component, row.state, row.cache_key, json.loads(row.properties),
                     row.started_at, row.ended_at)


def _sqlite_pragmas(connection: Any, _: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class MetadataStore:
    def __init__(self, url: str, create: bool = True) -> None:
        """`url`: a SQLAlchemy URL (`sqlite:///pipeline/metadata.sqlite`, `postgresql://...`);
        `create=False` only reads an existing store (its tables are not created)."""
        self.url = url
        # what may be shown (audit metadata, lineage): the URL without its password
        self.public_url = sa.engine.make_url(url).render_as_string(hide_password=True)
        sqlite = url.startswith("sqlite")
        database = sa.engine.make_url(url).database if sqlite else None
        if sqlite and not create and database and database != ":memory:":
            # a reader (`tfprod lineage`, the console) opens the file read-only: it never switches
            # the journal mode nor waits on a writer's lock (WAL readers do not block)
            self._engine = sa.create_engine(f"sqlite:///file:{os.path.abspath(database)}?mode=ro&uri=true")
        else:
            self._engine = sa.create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000} if sqlite else {})
            if sqlite:
                event.listen(self._engine, "connect", _sqlite_pragmas)
        # several processes opening a new store race on its migration: PostgreSQL serialises them
        # with an advisory lock, SQLite's losers retry
        for attempt in range(10 if create else 0):
            try:
                upgrade(self._engine)
                break
            except (sa.exc.OperationalError, sa.exc.IntegrityError, sa.exc.ProgrammingError):
                if attempt == 9:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def close(self) -> None:
        self._engine.dispose()

    def _session(self) -> Session:
        return Session(self._engine, expire_on_commit=False)

    # -- writing -----------------------------------------------------------------------------

    def context(self, type: str, name: str, properties: dict[str, Any] | None = None) -> int:
        """The id of the context (type, name), created when new (by one of concurrent callers)."""
        with self._session() as s:
            row = s.scalar(sa.select(ContextRow).where(ContextRow.type == type, ContextRow.name == name))
            if row is not None:
                return row.id
            row = ContextRow(type=type, name=name, properties=json.dumps(properties or {}))
            s.add(row)
            try:
                s.commit()
            except sa.exc.IntegrityError:  # another process created it first
                s.rollback()
                found = s.scalar(sa.select(ContextRow.id).where(ContextRow.type == type, ContextRow.name == name))
                assert found is not None
                return int(found)
            return row.id

    def start_execution(self, type: str, component: str, cache_key: str, contexts: Sequence[int],
                        inputs: dict[str, list[Artifact]], properties: dict[str, Any]) -> int:
        with self._session() as s, s.begin():
            row = ExecutionRow(type=type, component=component, state="RUNNING", cache_key=cache_key,
                               properties=json.dumps(properties, default=str))
            s.add(row)
            s.flush()
            for context in contexts:
                s.add(AssociationRow(context_id=context, execution_id=row.id))
            for role, artifacts in inputs.items():
                for a in artifacts:
                    s.add(EventRow(artifact_id=a.id, execution_id=row.id, kind=INPUT, role=role))
            return row.id

    def finish_execution(self, execution: int, state: str, outputs: dict[str, list[Artifact]],
                         contexts: Sequence[int], properties: dict[str, Any] | None = None) -> None:
        """Record the outputs (new artifacts get ids) and the final state, in one transaction."""
        with self._session() as s, s.begin():
            row = s.get(ExecutionRow, execution)
            assert row is not None
            row.state, row.ended_at = state, _now()
            if properties:
                row.properties = json.dumps({**json.loads(row.properties), **properties}, default=str)
            for role, artifacts in outputs.items():
                for a in artifacts:
                    if a.id is None:
                        art = ArtifactRow(type=a.type, uri=a.uri, properties=json.dumps(a.properties, default=str))
                        s.add(art)
                        s.flush()
                        a.id = art.id
                    s.add(EventRow(artifact_id=a.id, execution_id=execution, kind=OUTPUT, role=role))
                    for context in contexts:  # concurrent cached runs attribute the same artifact: no conflict
                        s.execute(_insert_ignoring_duplicates(s.get_bind().dialect.name, AttributionRow,
                                                              context_id=context, artifact_id=a.id))

    # -- reading -----------------------------------------------------------------------------

    def cached(self, cache_key: str) -> tuple[Execution, dict[str, list[Artifact]]] | None:
        """The latest complete execution with `cache_key`, and its outputs by role."""
        with self._session() as s:
            row = s.scalar(sa.select(ExecutionRow).where(ExecutionRow.cache_key == cache_key,
                                                         ExecutionRow.state == "COMPLETE")
                           .order_by(ExecutionRow.id.desc()).limit(1))
            if row is None:
                return None
            return _execution(row), self._events(s, row.id, OUTPUT)

    def _events(self, s: Session, execution: int, kind: str) -> dict[str, list[Artifact]]:
        out: dict[str, list[Artifact]] = {}
        rows = s.execute(sa.select(EventRow.role, ArtifactRow).join(ArtifactRow, ArtifactRow.id == EventRow.artifact_id)
                         .where(EventRow.execution_id == execution, EventRow.kind == kind).order_by(EventRow.id))
        for role, art in rows:
            out.setdefault(role, []).append(_artifact(art))
        return out

    def inputs_of(self, execution: int) -> dict[str, list[Artifact]]:
        with self._session() as s:
            return self._events(s, execution, INPUT)

    def outputs_of(self, execution: int) -> dict[str, list[Artifact]]:
        with self._session() as s:
            return self._events(s, execution, OUTPUT)

    def producer(self, artifact: int) -> Execution | None:
        """The execution that first wrote `artifact`."""
        with self._session() as s:
            row = s.scalar(sa.select(ExecutionRow).join(EventRow, EventRow.execution_id == ExecutionRow.id)
                           .where(EventRow.artifact_id == artifact, EventRow.kind == OUTPUT)
                           .order_by(ExecutionRow.id).limit(1))
            return None if row is None else _execution(row)

    def consumers(self, artifact: int) -> list[Execution]:
        """The executions that read `artifact`, oldest first."""
        with self._session() as s:
            rows = s.scalars(sa.select(ExecutionRow).join(EventRow, EventRow.execution_id == ExecutionRow.id)
                             .where(EventRow.artifact_id == artifact, EventRow.kind == INPUT).order_by(ExecutionRow.id))
            return [_execution(r) for r in rows]

    def artifacts(self, type: str, context: int | None = None, where: dict[str, Any] | None = None) -> list[Artifact]:
        """Artifacts of `type` (in `context`), newest first, whose properties include `where`."""
        with self._session() as s:
            query = sa.select(ArtifactRow).where(ArtifactRow.type == type)
            if context is not None:
                query = query.join(AttributionRow, AttributionRow.artifact_id == ArtifactRow.id).where(
                    AttributionRow.context_id == context)
            found = [_artifact(r) for r in s.scalars(query.order_by(ArtifactRow.id.desc()))]
        return [a for a in found if all(a.properties.get(k) == v for k, v in (where or {}).items())]

    def artifact(self, artifact: int) -> Artifact | None:
        with self._session() as s:
            row = s.get(ArtifactRow, artifact)
            return None if row is None else _artifact(row)

    def executions(self, context: int | None = None) -> list[Execution]:
        with self._session() as s:
            query = sa.select(ExecutionRow)
            if context is not None:
                query = query.join(AssociationRow, AssociationRow.execution_id == ExecutionRow.id).where(
                    AssociationRow.context_id == context)
            return [_execution(r) for r in s.scalars(query.order_by(ExecutionRow.id))]

    def contexts_of(self, execution: int) -> list[tuple[str, str]]:
        with self._session() as s:
            rows = s.execute(sa.select(ContextRow.type, ContextRow.name).join(
                AssociationRow, AssociationRow.context_id == ContextRow.id).where(
                AssociationRow.execution_id == execution))
            return [(t, n) for t, n in rows]



MIGRATIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "migrations")
_MIGRATION_LOCK = 7_262_001  # PostgreSQL advisory lock id of store migrations


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    """Migrate the store's schema to `revision` (Alembic, tfprod/pipeline/migrations)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})"))
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def revision_of(engine: sa.Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def _insert_ignoring_duplicates(dialect: str, table: type[_Base], **values: Any) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING, in the two dialects that spell it so."""
    from sqlalchemy.dialects import postgresql, sqlite

    if dialect == "postgresql":
        return postgresql.insert(table).values(**values).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(table).values(**values).on_conflict_do_nothing()
    raise ValueError(f"the metadata store supports SQLite and PostgreSQL, not {dialect}")


def by_ids(artifacts: Iterable[Artifact]) -> list[int]:
    return sorted(a.id for a in artifacts if a.id is not None)
