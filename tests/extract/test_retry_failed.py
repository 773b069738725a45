"""`extract --retry-failed`: a clip that failed (its file unreadable then, fixed since) gets its second chance;
shards without failures are left as they are."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from conftest import ROOT, small_overrides
from pipeline.cli import app
from stages.store import FeatureStore

SAMPLE = ROOT / "configs/extract/sample.yaml"


def test_a_fixed_file_is_extracted_by_retry_failed_and_other_shards_stay(copy_corpus, tmp_path):
    corpus = copy_corpus()
    victim = sorted(corpus.glob("*.mp4"))[3]  # shard 1 of 3 (2 clips a shard)
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 3])  # unreadable for now (an upload cut short)
    store = str(tmp_path / "store")
    runner = CliRunner()
    args = ["extract", "--config", str(SAMPLE), "--store", store, *small_overrides(corpus, **{"ray.num_workers": 0, "columns": "[teacher]"})]
    first = runner.invoke(app, args)
    assert first.exit_code == 1, first.output
    column = FeatureStore(store).column("teacher")
    assert [row["key"] for row in column.ledger()] == [victim.stem]
    attempts = {s: column.commit_record(s)["attempt"] for s in column.committed_shards()}

    victim.write_bytes(data)  # the file is whole again
    plain = runner.invoke(app, args)  # a plain rerun does not reopen committed shards, and says how to
    assert plain.exit_code == 1 and "nothing to do" in plain.output and "--retry-failed" in plain.output, plain.output

    retried = runner.invoke(app, [*args, "--retry-failed"])
    assert retried.exit_code == 0, retried.output
    assert "retried teacher: shard(s) 1 with failed clips extracted again" in retried.output
    column = FeatureStore(store).column("teacher")
    assert column.ledger() == []
    after = {s: column.commit_record(s)["attempt"] for s in column.committed_shards()}
    assert after[0] == attempts[0] and after[2] == attempts[2] and after[1] != attempts[1]
    assert victim.stem in column.commit_record(1)["clips"]  # the clip is in its shard now
    info = json.loads(runner.invoke(app, ["inspect", store, "--json"]).output)
    assert info["failed"] == 0 and {c["name"]: c["clips"] for c in info["columns"]} == {"teacher": 6}
