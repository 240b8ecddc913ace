"""scripts/results.py's pick of the adapter to ship reads its samples: a candidate whose continuation falls
into WikiText's blank lines, or that mostly stops at once, is passed over (docs/results_attempts.md section 6).
The texts below are shaped like the samples measured there."""

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
