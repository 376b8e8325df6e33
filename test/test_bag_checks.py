"""Structural checks of bags before reading: corruption and truncation are one-line errors with the
first bad offset and exit code 2 from `replay` and `evaluate`, never a silent read or a traceback."""

import random
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ssm_perception.cli import app
from ssm_perception.io.bag import BagError, check_bag, check_mcap, check_sqlite

runner = CliRunner()


@pytest.fixture(scope="module")
def demo_bag(tmp_path_factory):
    """The issue's bag: `ssm-perception simulate --scenario demo --duration 2` (in-process)."""
    out = tmp_path_factory.mktemp("bags") / "demo"
    res = runner.invoke(app, ["simulate", "--scenario", "demo", "--duration", "2", "-o", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    return out


def _copy(bag: Path, dst: Path) -> tuple[Path, Path]:
    shutil.copytree(bag, dst)
    return dst, next(dst.glob("*.mcap"))


def _one_line_error(res, *words):
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def _chunk_spans(mcap: Path) -> list[tuple[int, int]]:
    """(offset, end) of every top-level record, read independently of the checker."""
    data = mcap.read_bytes()
    spans, off = [], 8
    while off + 9 <= len(data):
        length = int.from_bytes(data[off + 1:off + 9], "little")
        spans.append((off, off + 9 + length))
        if data[off] == 0x02:
            break
        off += 9 + length
    return spans


def test_written_bags_carry_valid_crcs(demo_bag):
    """Our writer fills the CRCs rosbags leaves at 0, and the mcap package's own validating reader agrees."""
    from mcap.records import Chunk
    from mcap.stream_reader import StreamReader

    mcap = next(demo_bag.glob("*.mcap"))
    check_bag(demo_bag)
    chunks = [r for r in StreamReader(mcap.open("rb"), emit_chunks=True, validate_crcs=True).records
              if isinstance(r, Chunk)]
    assert chunks and all(c.uncompressed_crc != 0 for c in chunks)
    n = sum(1 for _ in StreamReader(mcap.open("rb"), validate_crcs=True).records)
    assert n > 100


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_blocks_in_the_middle_are_found_with_their_offset(demo_bag, tmp_path, seed):
    bag, mcap = _copy(demo_bag, tmp_path / "bag")
    size = mcap.stat().st_size
    rng = random.Random(seed)
    offsets = sorted(rng.randrange(size // 4, 3 * size // 4) for _ in range(3))
    with mcap.open("r+b") as f:
        for off in offsets:
            f.seek(off)
            f.write(bytes(rng.randrange(256) for _ in range(256)))
    with pytest.raises(BagError) as err:
        check_mcap(mcap)
    reported = int(re.search(r"offset (\d+)", str(err.value)).group(1))
    first = offsets[0]
    # the first damaged record is named: the one containing the first corrupted byte
    start, end = next((s, e) for s, e in _chunk_spans(demo_bag / mcap.name) if s <= first < e)
    assert reported == start, (str(err.value), start, end)
    for cmd in (["replay", str(bag), "--quiet"], ["evaluate", str(bag), "-o", str(tmp_path / "out")]):
        line = _one_line_error(runner.invoke(app, cmd), f"offset {start}")
        assert mcap.name in line


def test_truncated_bag_is_refused_by_replay_and_evaluate(demo_bag, tmp_path):
    bag, mcap = _copy(demo_bag, tmp_path / "bag")
    cut = mcap.stat().st_size // 2
    with mcap.open("r+b") as f:
        f.truncate(cut)
    for cmd in (["replay", str(bag), "--quiet"], ["evaluate", str(bag), "-o", str(tmp_path / "out")]):
        _one_line_error(runner.invoke(app, cmd), "truncated", "offset")
    # cut just before the end magic: still found
    _, mcap2 = _copy(demo_bag, tmp_path / "bag2")
    with mcap2.open("r+b") as f:
        f.truncate(mcap2.stat().st_size - 4)
    with pytest.raises(BagError, match="offset"):
        check_mcap(mcap2)


def test_missing_and_non_bag_paths(tmp_path):
    _one_line_error(runner.invoke(app, ["replay", str(tmp_path / "nope")]), "no such file")
    (tmp_path / "dir").mkdir()
    _one_line_error(runner.invoke(app, ["evaluate", str(tmp_path / "dir"), "-o", str(tmp_path / "o")]), "metadata.yaml")
    bad = tmp_path / "badmeta"
    bad.mkdir()
    (bad / "metadata.yaml").write_bytes(b"\x00\xff garbage")
    _one_line_error(runner.invoke(app, ["replay", str(bad)]), "metadata.yaml")


def test_rosbag2_with_ros1_definitions_is_refused(tmp_path):
    """A rosbag2 whose connections carry ROS 1 definitions (Header with seq): evaluate and replay
    refuse it in one line instead of failing inside the decoder."""
    import numpy as np
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    ros1 = get_typestore(Stores.ROS1_NOETIC)
    bag = tmp_path / "ros1defs"
    w = Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP)
    w.open()
    conn = w.add_connection("/sensing/lidar/points", "sensor_msgs/msg/PointCloud2", typestore=ros1)
    t = ros1.types
    header = t["std_msgs/msg/Header"](seq=1, stamp=t["builtin_interfaces/msg/Time"](sec=1, nanosec=0),
                                      frame_id="lidar")
    msg = t["sensor_msgs/msg/PointCloud2"](header=header, height=1, width=0, fields=[], is_bigendian=False,
                                           point_step=16, row_step=0, data=np.zeros(0, np.uint8), is_dense=True)
    w.write(conn, 1_000_000_000, ros1.serialize_cdr(msg, conn.msgtype))
    w.close()
    for cmd in (["evaluate", str(bag), "-o", str(tmp_path / "out")], ["replay", str(bag), "--quiet"]):
        _one_line_error(runner.invoke(app, cmd), "ROS 1", "/sensing/lidar/points")


def test_sqlite_bag_integrity(tmp_path):
    from ssm_perception.io.bag import BagWriter, string_msg

    with BagWriter(tmp_path / "sq", storage="sqlite3") as w:
        w.add_topic("/vehicle/zone", "std_msgs/msg/String")
        for k in range(60):
            w.write("/vehicle/zone", 1_000_000_000 + k, string_msg("urban " * 200))
    check_bag(tmp_path / "sq")
    db = next((tmp_path / "sq").glob("*.db3"))
    import sqlite3

    con = sqlite3.connect(db)
    page = con.execute("PRAGMA page_size").fetchone()[0]
    con.close()
    raw = bytearray(db.read_bytes())
    raw[page:2 * page] = random.Random(0).randbytes(page)  # page 2: a b-tree page of the first table
    db.write_bytes(bytes(raw))
    with pytest.raises(BagError, match="corrupt SQLite"):
        check_sqlite(db)
    _one_line_error(runner.invoke(app, ["replay", str(tmp_path / "sq")]), "corrupt SQLite")
