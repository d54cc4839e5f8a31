"""The per-event section of bench/results/profile.md, from bench/results/stream_instructions.json.

bench/stream_instructions.py splices it into profile.md between two markers after each run;
bench/profile.py (``make bench-profile``) puts it back at the top when it rewrites the file.
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SOURCE = RESULTS / "stream_instructions.json"
START, END = "<!-- streams -->", "<!-- /streams -->"

# Python calls per event, by layer: the file a function is defined in (bench/stream_calls.py names).
LAYERS = (
    ("the gateway (stream loop, framer, usage tap)", ("streams.py:", "sse.py:", "accounting.py:", "bodies.py:")),
    ("urllib3 (HTTPResponse reads)", ("response.py:",)),
    ("http.client (chunk framing, _safe_read)", ("client.py:",)),
    ("gevent (socket wait, Timeout per wait)", ("_socketcommon.py:", "timeout.py:", "_compat.py:", "hub.py:")),
    ("socket.py / connection reader", ("socket.py:", "connection.py:")),
    ("contextlib", ("contextlib.py:",)),
)


def _layer(name: str) -> str:
    for layer, files in LAYERS:
        if name.startswith(files):
            return layer
    return "other (background greenlets: usage writer, SQLAlchemy; fractions of a call)"


def section(counts: dict) -> list[str]:
    cfg = counts["config"]
    servers = counts.get("servers", [])
    base = f" --base {cfg['base']}" if cfg.get("base") else ""
    lines = [
        "## Streams: the per-event path",
        "",
        f"`make bench-stream-instructions` (`python -m bench.stream_instructions{base}`): "
        "callgrind in the real gunicorn gevent worker (the gateway with its gunicorn.conf.py, a managed key, usage rows, "
        'access log), relaying the bench upstream\'s OpenAI-shaped streams (`"usage": null` in every chunk when usage is '
        f"asked). Counting is zeroed and dumped around two phases of {cfg['streams']} streams, of {cfg['short']} and of "
        f"{cfg['long']} events {cfg['gap_ms']:g} ms apart (offset so that no two events arrive together: one read and one "
        "write per event); the difference, less what the idle worker executes in the extra time, over the extra events "
        "is one relayed event: upstream read, framing, usage tap, the response iterator, gunicorn's chunked write and the "
        "hub's switches, the request's own work excluded. Instruction counts do not move with the machine's load "
        "(other work held both cores during these runs); CPU times do. The floor: one Flask route relaying the same "
        "stream under the same worker (bench/floor_apps.py), nothing else.",
        "",
        "| code | server | instructions / event | vs requests floor | g_switch calls / event | instructions / stream, not events |",
        "|---|---|---|---|---|---|",
    ]
    floor = next((s["instructions_per_event"] for s in servers if "requests iter_content" in s["variant"]), None)
    for row in servers:
        ratio = f"{row['instructions_per_event'] / floor:.2f}×" if floor else "–"
        if row["variant"].startswith("portkey"):
            ratio = "not comparable (see below)"
        lines.append(
            f"| {row['code']} | {row['variant']} | {row['instructions_per_event']:,} | {ratio} | "
            f"{row['switches_per_event']:.2f} | {row['instructions_per_stream_besides_events']:,} |"
        )
    components = counts.get("components", {})
    if components:
        labels = list(components)
        names = list(next(iter(components.values())))
        lines += [
            "",
            "The gateway's own per-event functions alone, instructions per call "
            '(bench/stream_components.py: one OpenAI chunk with `"usage": null`; the empty loop\'s cost is subtracted '
            "from the others):",
            "",
            "| function | " + " | ".join(labels) + " |",
            "|---|" + "---|" * len(labels),
        ]
        for name in names:
            lines.append(f"| {name} | " + " | ".join(f"{components[label].get(name, 0):,}" for label in labels) + " |")
    calls = counts.get("calls_per_event")
    if calls:
        by_layer: dict[str, float] = {}
        for name, value in calls.items():
            if name.startswith(("C:", "(")):
                continue
            by_layer[_layer(name)] = by_layer.get(_layer(name), 0.0) + value
        python = sum(by_layer.values())
        native = sum(v for k, v in calls.items() if k.startswith("C:"))
        lines += [
            "",
            f"Python calls per relayed event, by layer (`python -m bench.stream_calls`: `sys.setprofile` over the "
            f"response iterator of the real app, gunicorn's write not included): **{python:.1f} Python calls** and "
            f"{native:.1f} calls of C functions from Python per event.",
            "",
            "| layer | Python calls / event |",
            "|---|---|",
        ]
        for layer, value in sorted(by_layer.items(), key=lambda item: -item[1]):
            lines.append(f"| {layer} | {value:.1f} |")
        lines += ["", "The functions (calls per event, at least 0.5):", ""]
        named = [(k, v) for k, v in calls.items() if not k.startswith(("C:", "(")) and v >= 0.5]
        lines.append(", ".join(f"`{k}` {v:.1f}" for k, v in sorted(named, key=lambda item: (-item[1], item[0]))) + ".")
    lines += ["", *READING]
    return lines


READING = [
    "Portkey's row is there to show why its comparison stays with CPU seconds (docs/benchmarks.md, "
    "interleaved runs): under valgrind V8 runs code it has not optimised as it would on the bare machine "
    "(and its per-stream remainder comes out negative), so its count is several times what its CPU time "
    "says against this gateway's. Instruction counts compare Python with Python: this tree, the base commit "
    "and the floor.",
    "",
    "What a relayed event costs now, and what would have to change to cost less:",
    "",
    "- **The gateway's own work** per event is five Python calls: the relay generator's resume "
    "(`stream_events`), `EventFramer.feed` (one `bytes.endswith` for a read of whole events, returned uncopied), "
    '`StreamUsageTap.feed` (two `bytes.count`; only a chunk whose `"usage"` is not `null` is parsed, so '
    "the usage chunk and nothing else), `StreamUsageTap.relayed` (a list append until the usage is known) and the "
    "gevent worker's `CuttableStream.__next__` (the drain's wrapper). No copy of the event's bytes on the way: "
    "the bytes read are the bytes written. A paced stream takes no turn of its own (`gevent.sleep(0)`): "
    "it waited on its socket, the hub ran. Streams with and without usage asked cost the same: the usage chunk "
    "is parsed once either way, and removed (one join) only for a client that did not ask.",
    "- **The library stack** is the rest, the same for any relay on this worker: urllib3's `read_chunked` "
    "(the generator, `_update_chunk_length`, `_handle_chunk`, `_decode`) and http.client's `_safe_read` twice "
    "per HTTP chunk; gevent's socket wait, which starts and closes a `Timeout` on every wait because the "
    "upstream socket carries the read timeout (about ten Python calls per event); the pool connection's "
    "`HeadDeadlineReader.readinto` (gateway/upstream/connection.py, one call per socket read, needed only "
    "for the head); gunicorn's `Response.write` -> `_emit_body` -> `util.write` -> `write_chunk` (a join of the chunk size, "
    "the event and CRLF) -> `sendall`; and the wait for the next event (greenlet switches: as many `g_switch` "
    "calls per event as the floor's; the base commit, with its `gevent.sleep(0)` per paced event, about twice as many).",
    "- **To go lower** would take: (1) an idle timeout that is not a socket timeout (one timer per stream, "
    "restarted per event, instead of gevent's `Timeout` per wait: needs the upstream client's "
    "`set_read_timeout` to change); (2) the head-deadline reader out of the way once the head is in "
    "(gateway/upstream/connection.py); (3) events that arrived together written together: urllib3 and "
    "http.client return one HTTP chunk per read, and streaming servers send one event per chunk, so a "
    "backlog of N events is N reads and N writes (with a read that returned everything buffered, through "
    "public API, a saturated core would relay more events per write); (4) gunicorn writing a chunk with "
    "`sendmsg` (head, event, CRLF) instead of joining them; (5) below all that, the interpreter itself: each "
    "Python call is on the order of a thousand instructions.",
]


def block() -> list[str]:
    """The section between its markers, or nothing when there are no counts yet."""
    if not SOURCE.exists():
        return []
    return [START, *section(json.loads(SOURCE.read_text())), END, ""]


def update_profile_md(path: Path = RESULTS / "profile.md") -> None:
    """Put the section in profile.md: in place of the previous one, else after the title."""
    text = path.read_text() if path.exists() else "# Profile of the gateway worker\n"
    new = "\n".join(block())
    if START in text and END in text:
        before, rest = text.split(START, 1)
        after = rest.split(END, 1)[1].lstrip("\n")
        text = before + new + after
    else:
        title, _, rest = text.partition("\n")
        text = f"{title}\n\n{new}{rest.lstrip(chr(10))}"
    path.write_text(text)
