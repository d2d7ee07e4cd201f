"""fairseq is changed in one place: its whole configuration (reached through OmegaConf's private `_get_root`)
and the command line (`sys.argv`) are read and written only in ofa_prompt/fairseq_compat/."""
from conftest import REPO

PACKAGE = REPO / "ofa_prompt"
COMPAT = PACKAGE / "fairseq_compat"
GUARDED = ("_get_root", "sys.argv")


def test_fairseqs_configuration_and_the_command_line_are_reached_only_through_fairseq_compat():
    found = [f"{path.relative_to(REPO)}:{number}: {line.strip()}"
             for path in sorted(PACKAGE.rglob("*.py")) if COMPAT not in path.parents
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if any(name in line for name in GUARDED)]
    assert found == [], "use ofa_prompt.fairseq_compat.config:\n" + "\n".join(found)


def test_the_compat_package_is_where_they_are():
    # the check above looks for these names: it would pass vacuously if fairseq_compat no longer used them
    text = "\n".join(path.read_text() for path in COMPAT.glob("*.py"))
    assert all(name in text for name in GUARDED)
