"""Keys never move: every tag key the project defines, pinned by its exact spelling, and runs written while three of
them were spelt otherwise still read (the keys each kind of run carries are pinned in tests/golden/ by the tests
that make those runs: test_app, test_post_training, test_compare)."""

from geomsweep.keys import tags as keys
from tests.conftest import assert_keys_pinned


def test_every_tag_key_keeps_its_spelling():
    defined = [f"{name} {value}" for name, value in vars(keys).items() if name.startswith(("TAG_", "ROLE_"))]
    assert_keys_pinned("tag_keys", defined)


def test_runs_written_with_the_moved_spellings_still_read():
    assert keys.TAG_PHASES == "geomsweep.phases"
    assert keys.TAG_ABLATION == "geomsweep.ablation" and keys.TAG_ALPHA_FIT == "geomsweep.alpha_fit"
    written_in_between = {"geomsweep.core.phases": "warmup until 10, entropy-seeking"}
    assert keys.read_tag(written_in_between, keys.TAG_PHASES) == "warmup until 10, entropy-seeking"
    assert keys.read_tag({"geomsweep.phases": "new", "geomsweep.core.phases": "old"}, keys.TAG_PHASES) == "new"
    assert keys.read_tag({}, keys.TAG_ALPHA_FIT, "none") == "none"
