"""`edgepipe bench` and the pipeline's benchmark stage on the host and on two
emulated Android devices at once, through the real adb and the real runner."""
import json
import subprocess
import sys

from fixtures.adb_device import DeviceProfile, adb_server, make_device  # noqa: F401
from pipelines.config import parse_config
from pipelines.run import run_pipeline


def test_bench_on_host_and_all_devices(adb_server, make_device, tmp_path, tiny_tflite_bytes):
    phones = [make_device(DeviceProfile(model=name)) for name in ("Pixel 8", "Galaxy S24")]
    for phone in phones:
        adb_server.connect(phone)
    model = tmp_path / "tiny.tflite"
    model.write_bytes(tiny_tflite_bytes)
    output = tmp_path / "bench" / "result.json"
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "bench", "--model", str(model),
         "--target", "host,all", "--threads", "1,2", "--num_runs", "5", "--warmup_runs", "1",
         "--json_output", str(output)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(output.read_text())["benchmarks"]
    targets = sorted({(r["target"], r["threads"]) for r in rows})
    assert targets == sorted([("host", 1), ("host", 2)] +
                             [(p.serial, t) for p in phones for t in (1, 2)])
    models = {r["target"]: r["device"].get("model") for r in rows}
    assert models[phones[0].serial] == "Pixel 8" and models[phones[1].serial] == "Galaxy S24"
    assert all(r["mean_ms"] > 0 and r["runs"] >= 5 for r in rows)
    assert "| Pixel 8" in result.stdout
    journal = (tmp_path / "bench" / "tiny.measurements.jsonl").read_text().splitlines()
    assert len(journal) == 6


def test_pipeline_benchmarks_every_device(adb_server, make_device, tmp_path):
    """targets [host, all] with an x86_64 emulator and an arm64 phone (the bundle under
    qemu) connected: the run measures every variant on all three."""
    emulator = make_device(DeviceProfile(model="Pixel 8"))
    phone = make_device(DeviceProfile(model="Emulated Pixel 9", abi="arm64-v8a"))
    for device in (emulator, phone):
        adb_server.connect(device)
    config = parse_config({
        "output_dir": str(tmp_path / "run"),
        "models": [{"name": "rnn", "builder": "gru_classifier", "options": {"units": [8]},
                    "data": {"kind": "sequence"}, "train": {"epochs": 1},
                    "pruning": {"enabled": False}, "variants": ["float32", "dynamic_range"]}],
        "benchmark": {"targets": ["host", "all"], "threads": [1], "warmup_runs": 1,
                      "num_runs": 5}})
    results = run_pipeline(config)
    for variant in results["variants"]:
        benchmarks = variant["benchmarks"]
        assert sorted(b["target"] for b in benchmarks) == sorted(
            ["host", emulator.serial, phone.serial])
        abis = {b["target"]: b["bundle"]["abi"] for b in benchmarks}
        assert (abis[emulator.serial], abis[phone.serial]) == ("x86_64", "arm64-v8a")
        assert all(b["runs"] >= 5 and b["mean_ms"] > 0 for b in benchmarks)
    report = (tmp_path / "run" / "report.md").read_text()
    assert f"| {emulator.serial} | Pixel 8" in report
    assert f"| {phone.serial} | Emulated Pixel 9" in report


def test_bench_on_one_device_by_serial(adb_server, make_device, tmp_path, tiny_tflite_bytes):
    from pipelines.benchmark import measure
    from pipelines.config import BenchmarkConfig

    phone = make_device(DeviceProfile(model="Pixel 8"))
    adb_server.connect(phone)
    model = tmp_path / "tiny.tflite"
    model.write_bytes(tiny_tflite_bytes)
    rows = measure(phone.serial, model, BenchmarkConfig(num_runs=3, warmup_runs=1),
                   tmp_path / "journal.jsonl")
    assert [(r["target"], r["threads"]) for r in rows] == [(phone.serial, 1)]
