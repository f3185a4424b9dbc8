"""OData request handling independent of HTTP: query options -> a page, its JSON and its nextLink.

Server-driven paging is keyset-based: `$skiptoken` carries the sort values of the last row
served (bound to the entity set, $filter and $orderby it was issued for), so page N costs
the same as page 1. `$skip` is applied once, in SQL, on the first page; `$top` caps the
total and travels in the nextLink as the remainder.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from services.api.errors import InvalidParameter
from services.api.odata.compile import SortColumn, sort_columns
from services.api.odata.model import EntitySet, Property
from services.api.odata.parser import parse_filter, parse_orderby, parse_select
from services.api.odata.repository import ODataRepository, PageQuery
from services.api.pagination import decode_page_token, encode_page_token, fingerprint

DEFAULT_PAGE_SIZE = 1000
MAX_PAGE_SIZE = 5000
SUPPORTED_OPTIONS = frozenset(
    {"$select", "$filter", "$orderby", "$top", "$skip", "$count", "$skiptoken", "$format"}
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Options:
    """The validated system query options of one request."""

    filter_text: str | None
    orderby_text: str | None
    select: list[str] | None
    top: int | None
    skip: int
    count: bool
    skiptoken: str | None


def parse_options(params: list[tuple[str, str]]) -> Options:
    """Validate the query string: unsupported $options and repeated ones are a 400."""
    seen: dict[str, str] = {}
    for name, value in params:
        if not name.startswith("$"):
            continue  # custom query options are ignored (OData 4.0, 5.2)
        if name not in SUPPORTED_OPTIONS:
            raise InvalidParameter(
                f"the query option {name} is not supported (supported: {', '.join(sorted(SUPPORTED_OPTIONS))})"
            )
        if name in seen:
            raise InvalidParameter(f"the query option {name} is given more than once")
        seen[name] = value
    fmt = seen.get("$format")
    if fmt is not None and fmt.split(";")[0].strip() not in ("json", "application/json"):
        raise InvalidParameter(f"$format={fmt} is not supported: this feed answers JSON")
    count = seen.get("$count", "false").lower()
    if count not in ("true", "false"):
        raise InvalidParameter("$count must be true or false")
    return Options(
        filter_text=seen.get("$filter"),
        orderby_text=seen.get("$orderby"),
        select=parse_select(seen.get("$select")),
        top=_non_negative(seen, "$top"),
        skip=_non_negative(seen, "$skip") or 0,
        count=count == "true",
        skiptoken=seen.get("$skiptoken"),
    )


def _non_negative(seen: dict[str, str], name: str) -> int | None:
    raw = seen.get(name)
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 18:
        raise InvalidParameter(f"{name} must be a non-negative integer, got {raw!r}")
    return int(raw)


def page_size_preference(prefer: str | None) -> int | None:
    """`Prefer: odata.maxpagesize=N` (capped at MAX_PAGE_SIZE), None when absent."""
    if not prefer:
        return None
    for part in prefer.split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() in ("odata.maxpagesize", "maxpagesize") and value.strip().isdigit():
            return max(1, min(MAX_PAGE_SIZE, int(value.strip())))
    return None


# Values: JSON (response) and page-token (position) encodings ----------------------------------


def _iso(moment: datetime, micros: bool) -> str:
    moment = moment.astimezone(UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if micros:
        return f"{text}.{moment.microsecond:06d}Z"
    return f"{text}.{moment.microsecond // 1000:03d}Z"


def json_value(prop: Property, value: Any) -> Any:
    """A value as OData JSON writes it (DateTimeOffset ISO 8601, NaN/INF as strings)."""
    if value is None:
        return None
    if prop.edm == "Edm.DateTimeOffset":
        if prop.storage == "ms":
            return _iso(_EPOCH + timedelta(milliseconds=int(value)), micros=False)
        if isinstance(value, datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=UTC)
            return _iso(value, micros=prop.storage == "tstz")
        return str(value)
    if prop.edm == "Edm.Double":
        number = float(value)
        if math.isnan(number):
            return "NaN"
        if math.isinf(number):
            return "INF" if number > 0 else "-INF"
        return number
    if prop.edm == "Edm.Guid":
        return str(value)
    return value


def _position_value(column: SortColumn, value: Any) -> Any:
    if value is None:
        return None
    prop = column.prop
    if prop.storage == "tstz":
        assert isinstance(value, datetime)
        return (value - _EPOCH) // timedelta(microseconds=1)
    if prop.storage == "ch_time":
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return (value - _EPOCH) // timedelta(milliseconds=1)
    if prop.edm == "Edm.Double":
        return repr(float(value))
    if prop.edm == "Edm.Guid":
        return str(value)
    return value


def _decode_position(columns: list[SortColumn], raw: list[Any]) -> list[Any]:
    if len(raw) != len(columns):
        raise InvalidParameter("invalid $skiptoken")
    out: list[Any] = []
    for column, value in zip(columns, raw, strict=True):
        prop = column.prop
        if value is None:
            if not prop.nullable:
                raise InvalidParameter("invalid $skiptoken")
            out.append(None)
        elif prop.storage == "tstz" and type(value) is int:
            out.append(_EPOCH + timedelta(microseconds=value))
        elif (prop.storage in ("ms", "ch_time") or prop.edm == "Edm.Int64") and type(value) is int:
            out.append(value)
        elif prop.edm == "Edm.Double" and isinstance(value, str):
            try:
                out.append(float(value))
            except ValueError:
                raise InvalidParameter("invalid $skiptoken") from None
        elif prop.edm == "Edm.Guid" and isinstance(value, str):
            try:
                out.append(str(uuid.UUID(value)))
            except ValueError:
                raise InvalidParameter("invalid $skiptoken") from None
        elif prop.edm == "Edm.String" and isinstance(value, str):
            out.append(value)
        else:
            raise InvalidParameter("invalid $skiptoken")
    return out


class ODataService:
    """Answers entity-set requests for one caller."""

    def __init__(self, repository: ODataRepository) -> None:
        self._repository = repository

    async def count(self, entity_set: EntitySet, params: list[tuple[str, str]]) -> int:
        """`/EntitySet/$count`: the rows matching $filter."""
        options = parse_options(params)
        return await self._repository.count(entity_set, parse_filter(options.filter_text))

    async def collection(
        self,
        entity_set: EntitySet,
        params: list[tuple[str, str]],
        service_root: str,
        page_size: int,
    ) -> dict[str, Any]:
        """The JSON body of one page of an entity set."""
        options = parse_options(params)
        node = parse_filter(options.filter_text)
        columns = sort_columns(entity_set, parse_orderby(options.orderby_text))
        if options.select is None:
            select = list(entity_set.properties)
        else:
            select = []
            for name in options.select:
                prop = entity_set.property(name)
                if prop is None:
                    raise InvalidParameter(f"invalid $select: {entity_set.name} has no property {name!r}")
                select.append(prop)
        scope = fingerprint("odata", entity_set.name, options.filter_text or "", options.orderby_text or "")
        position = None
        if options.skiptoken:
            try:
                raw = decode_page_token(options.skiptoken, scope)
            except InvalidParameter as exc:
                raise InvalidParameter(exc.message.replace("page_token", "$skiptoken")) from None
            position = _decode_position(columns, raw)
        wanted = page_size if options.top is None else min(page_size, options.top)
        context = f"{service_root}$metadata#{entity_set.name}"
        if options.select is not None:
            context += "(" + ",".join(p.name for p in select) + ")"
        body: dict[str, Any] = {"@odata.context": context}
        if options.count:
            body["@odata.count"] = await self._repository.count(entity_set, node)
        rows: list[dict[str, Any]] = []
        if wanted > 0:
            query = PageQuery(
                entity_set,
                node,
                columns,
                position,
                0 if position is not None else options.skip,
                wanted + 1,
                select,
            )
            rows = await self._repository.page(query)
        more = len(rows) > wanted
        rows = rows[:wanted]
        body["value"] = [{p.name: json_value(p, row[f"c{i}"]) for i, p in enumerate(select)} for row in rows]
        remaining = None if options.top is None else options.top - len(rows)
        if more and rows and (remaining is None or remaining > 0):
            last = rows[-1]
            token = encode_page_token(
                [_position_value(c, last[f"s{i}"]) for i, c in enumerate(columns)], scope
            )
            query_string: list[tuple[str, str]] = []
            for name, value in (
                ("$filter", options.filter_text),
                ("$orderby", options.orderby_text),
                ("$select", ",".join(options.select) if options.select else None),
                ("$count", "true" if options.count else None),
                ("$top", str(remaining) if remaining is not None else None),
                ("$skiptoken", token),
            ):
                if value is not None:
                    query_string.append((name, value))
            body["@odata.nextLink"] = f"{service_root}{entity_set.name}?{urlencode(query_string)}"
        return body
