"""The demo (attentive.demo): its stages' commands, the summary table and the notes on tied exports."""
import json

from attentive import demo
from attentive.demo import choice_notes, summarize, write_report


def _export(root, name, mflops, holdout, test, choice):
    d = root / "search" / name
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({
        "budget_mflops": float(name.split("_")[1].removesuffix("mflops")), "mflops": mflops, "fvcore_mflops": mflops,
        "mparams": 0.3, "holdout_top1": holdout, "test_top1": test, "search_choice": choice}))


def test_report_explains_an_export_tied_with_a_smaller_best(tmp_path):
    best = {"tie_z": 1.0, "best_measured_id": 3, "best_measured_mflops": 2.95, "best_measured_holdout_top1": 90.97,
            "behind_best_points": 0.0, "standard_error_points": None}
    tied = {**best, "behind_best_points": 0.0167, "standard_error_points": 0.21}
    _export(tmp_path, "subnet_3mflops", 2.95, 90.97, 90.13, best)
    _export(tmp_path, "subnet_5mflops", 4.952, 90.95, 90.77, tied)
    notes = choice_notes(tmp_path)
    assert notes == ["subnet_5mflops: 4.95 MFLOPs, 0.02 held-out points behind the best measured arch under its "
                     "budget (2.95 MFLOPs, 90.97), within 1 paired standard errors (0.21): a tie, which goes to the "
                     "larger arch (search.py --tie-z)"]
    table = summarize(tmp_path)
    assert table.splitlines()[2] == "| subnet_3mflops | 3 | 2.95 | 0.300 | 90.97 | 90.13 |"
    report = write_report(tmp_path, table, {"training": 60.0}).read_text()
    assert f"- {notes[0]}\n" in report and "training 1.0 min" in report


def test_predictor_labels_are_measured_as_the_search_measures_its_candidates(tmp_path):
    """The predictor stage measures its archs with the search's BN calibration, on the whole held-out split, so
    the predictor learns the numbers the search then compares (labels on fewer images were noisier)."""
    import search as search_cli
    from predictors.retrain import get_args_parser as retrain_parser

    args = demo.get_args_parser().parse_args(["--out", str(tmp_path)])
    commands = {name: cmd for name, _, cmd, _ in demo.stages(args, tmp_path, "python")}
    assert list(commands) == ["training", "predictor", "search"]
    retrain = retrain_parser().parse_args(commands["predictor"][3:])
    search = search_cli.get_args_parser().parse_args(commands["search"][2:])
    assert (retrain.calib_batches, retrain.calib_batch_size) == (search.calib_batches, search.calib_batch_size) \
        == (8, 128)
    assert retrain.holdout_images is None and search.holdout_size is None  # the whole held-out split, both
    assert str(retrain.checkpoint) == search.checkpoint == str(tmp_path / "train" / "last.pt")
    assert str(retrain.out) == search.predictor == str(tmp_path / "predictor")
