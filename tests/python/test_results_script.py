"""scripts/results.py's pick of the adapter to ship reads its samples: a candidate whose continuation falls
into WikiText's blank lines, or that mostly stops at once, is passed over (docs/results_attempts.md section 6).
The texts below are shaped like the samples measured there. Its record (docs/results.json) stands in for a
missing cache only where the settings are the same."""

import importlib.util

from fbtest import REPO


def load_results():
    spec = importlib.util.spec_from_file_location("results_script", REPO / "scripts/results.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


R = load_results()


def sample(seed, text, tokens=96):
    return {"seed": seed, "tokens": tokens, "text": text}


ON_TOPIC = " the site is open to visitors . It is a world heritage site and one of the largest sites in Guatemala ."


def test_on_topic_samples_pass_and_one_early_stop_is_allowed():
    assert R.sample_faults([sample(1, ON_TOPIC), sample(2, ON_TOPIC + " \n \n = = History = = \n \n The"),
                            sample(3, ", the site is a UNESCO World Heritage Site.", 11), sample(4, ON_TOPIC)]) == []


def test_a_run_of_blank_lines_fails_naming_the_seed():
    got = R.sample_faults([sample(1, ON_TOPIC + " \n \n \n \n \n \n"), sample(2, ON_TOPIC),
                           sample(3, ON_TOPIC), sample(4, ON_TOPIC + " \n  \n \n \n  \n")])
    assert got == ["seed 1: a run of blank lines", "seed 4: a run of blank lines"]
    # a paragraph break (one blank line) and a heading are WikiText's layout, not a fault
    assert R.sample_faults([sample(1, ON_TOPIC + " \n \n = = Site = = \n \n")]) == []


def test_mostly_stopping_at_once_fails():
    got = R.sample_faults([sample(1, " Today.", 3), sample(2, ON_TOPIC), sample(3, " It is.", 4),
                           sample(4, " Yes.", 2)])
    assert got == [f"seeds [1, 3, 4]: stop within {R.SAMPLE_SHORT} tokens"]
    assert R.sample_faults([sample(1, " Today.", 3), sample(2, ON_TOPIC)]) == []  # half is not most


# docs/results.json as the record: a fresh clone (no cache) uses what it measured with the same settings
SETTINGS = {"layout": "append", "marks": True, "targets": ("q_proj", "k_proj"), "r": 16, "lr": 0.002, "seed": 0}


def experiment(record):
    ex = R.Experiment.__new__(R.Experiment)
    ex.record = record
    return ex


def record():
    legacy_run = {"setting": "append + marks + LoRA", "mode": "append", "marks": True, "doc_positions": "before",
                  "fine_tune_steps": 40, "ppl": 19.95}
    legacy_base = {"setting": "none (no retrieval)", "mode": "none", "marks": False, "doc_positions": "",
                   "fine_tune_steps": 0, "ppl": 22.57}
    keyed = {"setting": "prepend", "key": "k1", "mode": "prepend", "marks": False, "doc_positions": "",
             "fine_tune_steps": 0, "ppl": 23.02}
    return {"rows": [legacy_run, legacy_base, keyed], "curves": {"append + marks + LoRA": [{"step": 0, "eval_loss": 3.3}]},
            "settings": {"append + marks + LoRA": R.json.loads(R.json.dumps(SETTINGS))}}


def test_a_recorded_run_is_used_only_with_the_same_settings():
    ex = experiment(record())
    assert ex.recorded_run("append + marks + LoRA", SETTINGS) == [{"step": 0, "eval_loss": 3.3}]
    assert ex.recorded_run("append + marks + LoRA", dict(SETTINGS, lr=0.001)) is None
    assert ex.recorded_run("append + marks + LoRA", dict(SETTINGS, seed=1)) is None
    assert ex.recorded_run("prepend + LoRA", SETTINGS) is None
    assert experiment(None).recorded_run("append + marks + LoRA", SETTINGS) is None


def test_a_recorded_row_is_used_only_with_the_same_key_or_key_parts():
    ex = experiment(record())
    run = {"settings": SETTINGS}
    got = ex.recorded_row("append + marks + LoRA", "new", "append", True, run, "before", 512)
    assert got["ppl"] == 19.95 and got["key"] == "new"  # a legacy row gains its key
    assert ex.recorded_row("append + marks + LoRA", "new", "append", True, run, "after", 512) is None
    assert ex.recorded_row("append + marks + LoRA", "new", "append", True, run, "before", 382) is None
    assert ex.recorded_row("append + marks + LoRA", "new", "append", True,
                           {"settings": dict(SETTINGS, r=8)}, "before", 512) is None
    assert ex.recorded_row("none (no retrieval)", "x", "none", False, None, "before", 512)["ppl"] == 22.57
    assert ex.recorded_row("none (no retrieval)", "x", "none", False, run, "before", 512) is None
    assert ex.recorded_row("prepend", "k1", "prepend", False, None, "before", 512)["ppl"] == 23.02
    assert ex.recorded_row("prepend", "k2", "prepend", False, None, "before", 512) is None


def test_the_record_of_another_model_is_not_used_and_a_broken_one_is_named(tmp_path):
    ex = experiment(None)
    ex.fingerprint, ex.split, ex.args = "f1", {"heldout_tokens": 10}, R.argparse.Namespace(score_tokens=0)
    path = tmp_path / "results.json"
    rec = {"fingerprint": "f1", "split": {"heldout_tokens": 10}, "args": {"score_tokens": 0}}
    path.write_text(R.json.dumps(rec))
    assert ex.read_record(path) == rec
    path.write_text(R.json.dumps(dict(rec, fingerprint="f2")))
    assert ex.read_record(path) is None
    path.write_text(R.json.dumps(dict(rec, split={"heldout_tokens": 11})))
    assert ex.read_record(path) is None
    path.write_text("{\"rows\": []}")
    try:
        ex.read_record(path)
        raise AssertionError("a record without its fields was read")
    except SystemExit as e:
        assert str(path) in str(e) and "not a results record" in str(e)
    assert ex.read_record(tmp_path / "absent.json") is None
