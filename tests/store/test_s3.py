"""The corpus and the store on an s3:// bucket, served on localhost by moto's real S3 server."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from conftest import ROOT, small_overrides
from pipeline.cli import app
from stages.store import FeatureStore

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture
def s3_bucket(small_corpus, moto_s3):
    options, fs = moto_s3
    fs.put(str(small_corpus), "bucket/clips", recursive=True)
    return options, fs


def test_corpus_and_store_on_s3(s3_bucket, ray_session):
    options, fs = s3_bucket
    overrides = small_overrides("s3://bucket/clips") + [f"corpus.storage_options={json.dumps(options)}", "corpus.limit=4"]
    runner = CliRunner()
    result = runner.invoke(app, ["extract", "--config", str(ROOT / "configs/extract/sample.yaml"), "--store", "s3://bucket/store", *overrides])
    assert result.exit_code == 0, result.output
    store = FeatureStore("s3://bucket/store", options)
    summary = store.summary()
    assert summary["clips"] == 4 and summary["failed"] == 0
    assert {c["name"]: c["clips"] for c in summary["columns"]} == {"teacher": 4, "encodings": 4, "image_teacher": 4}
    assert fs.exists("bucket/store/corpus/snapshot.json")
    teacher = store.column("teacher").read_shard(1)
    assert teacher.arrays["fwd"].shape[0] == 2 and teacher.records[0]["source"].startswith("s3://bucket/clips/")
    info = runner.invoke(app, ["inspect", "s3://bucket/store", "--json", "--storage-options", json.dumps(options)])
    assert info.exit_code == 0 and json.loads(info.output)["clips"] == 4
