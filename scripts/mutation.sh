#!/usr/bin/env bash
# Mutation testing with mutmut 3 (not part of CI): every small change mutmut makes to a module (an operator, a
# constant, a dropped argument) is run against that module's fast tests; a mutant that no test fails ("survived") is
# a bug the suite would let through, or an equivalent change.
#
#   scripts/mutation.sh TARGET [MUTANT_GLOB ...]
#     TARGET: ppo          lit_codegen/ppo.py                 tests/test_ppo_math.py
#             compare      lit_codegen/reward/compare.py      tests/reward/test_compare.py
#             datamodule   lit_codegen/data/datamodule.py     tests/data/test_datamodule.py
#             evaluator    lit_codegen/reward/evaluator.py    tests/reward/test_evaluator.py; scoring only
#             module       lit_codegen/module.py              tests/test_module.py (but its two minutes-long tests),
#                                                                tests/test_micro_batching.py, tests/test_experience.py;
#                                                                the wiring into update.py only
#             update       lit_codegen/update.py              the same tests
#             experience   lit_codegen/experience.py          tests/test_experience.py and tests/test_module.py (but its
#                                                                two minutes-long tests)
#     MUTANT_GLOB: only these mutants, e.g. 'lit_codegen.ppo.x_policy_loss*'
#   MUTMUT_CHILDREN=4 scripts/mutation.sh ppo    more parallel test processes (default 2)
#
# mutmut reads its settings from setup.cfg in the folder it runs in, so each target runs in a folder of its own,
# .mutation/TARGET/ (git-ignored): a copy of lit_codegen/ and tests/ and a setup.cfg that is this repo's with the
# target's [mutmut] section. Its results stay there: `cd .mutation/TARGET && python -m mutmut show NAME`.
# Needs `pip install mutmut` (3.x).
set -euo pipefail
cd "$(dirname "$0")/.."
target="${1:?usage: scripts/mutation.sh ppo|compare|datamodule|evaluator|module|update|experience [MUTANT_GLOB ...]}"
shift
globs=("$@")
case "$target" in
  ppo) module=lit_codegen/ppo.py; tests="tests/test_ppo_math.py" ;;
  compare) module=lit_codegen/reward/compare.py
    tests="tests/reward/test_compare.py" ;;
  datamodule) module=lit_codegen/data/datamodule.py; tests="tests/data/test_datamodule.py" ;;
  evaluator) module=lit_codegen/reward/evaluator.py; tests="tests/reward/test_evaluator.py"
    # the scoring: verdicts from replies, pass rates, limits checks; not the process plumbing
    [ ${#globs[@]} -gt 0 ] || globs=("lit_codegen.reward.evaluator.x?_Batch?*" "lit_codegen.reward.evaluator.x?EvalResult?*"
                                    "lit_codegen.reward.evaluator.x_check_limits__mutmut_*") ;;
  module) module=lit_codegen/module.py; tests="tests/test_module.py tests/test_micro_batching.py tests/test_experience.py"
    deselect="not compiled_layers and not max_steps_counts"  # minutes each; what they check is not this wiring
    # the wiring into lit_codegen.update: scoring passes, micro-batches, the two updates and the optimizer step
    # (mutmut names a method's mutants lit_codegen.module.x?PPOModule?METHOD__mutmut_N)
    # (not _most_on_any_rank: only the 2-process test reaches its collective, and torchrun's workers import the
    # unmutated package)
    [ ${#globs[@]} -gt 0 ] || for method in _logprobs _values _micro_batches _update_critic _update_actor _step; do
        globs+=("lit_codegen.module.x?PPOModule?${method}__mutmut_*"); done ;;
  update) module=lit_codegen/update.py; tests="tests/test_module.py tests/test_micro_batching.py tests/test_experience.py"
    deselect="not compiled_layers and not max_steps_counts" ;;
  experience) module=lit_codegen/experience.py; tests="tests/test_experience.py tests/test_module.py"
    deselect="not compiled_layers and not max_steps_counts" ;;
  *) echo "unknown target '$target' (ppo, compare, datamodule, evaluator, module, update or experience)" >&2; exit 2 ;;
esac

work=".mutation/$target"
mkdir -p "$work"
rm -rf "$work/lit_codegen" "$work/tests" "$work/mutants"  # a fresh run: mutmut keeps old verdicts when tests change
cp -r lit_codegen tests "$work/"
python - "$work/setup.cfg" "$module" "$tests" "${deselect:-}" <<'PY'
import configparser
import sys

path, module, tests, deselect = sys.argv[1:]
config = configparser.ConfigParser(interpolation=None)
config.read("setup.cfg")
config["mutmut"] = {
    "source_paths": "lit_codegen/",
    "only_mutate": module,
    "pytest_add_cli_args_test_selection": "\n" + "\n".join(tests.split()),
    "pytest_add_cli_args": "\n-p\nno:cacheprovider" + (f"\n-k\n{deselect}" if deselect else ""),
}
with open(path, "w") as f:
    config.write(f)
PY
if [ "$target" = module ]; then
  # mutmut's wrapper around a mutated __init__ hides its arguments from save_hyperparameters (which reads the
  # caller's frame): PPOModule.__init__ is left unmutated, so that the tests can build a module at all
  python - "$work/lit_codegen/module.py" <<'PY'
import re
import sys

path = sys.argv[1]
source = open(path).read()
source, n = re.subn(r"(\n    def __init__\(\n(?:        .*\n)*?    \) -> None:)\n", r"\1  # pragma: no mutate block\n", source, 1)
assert n == 1, "PPOModule.__init__ not found"
open(path, "w").write(source)
PY
fi
cd "$work"
# mutmut forks a child per mutant from a process that has already run the tests: a forked child of a process whose
# OpenMP thread pool is up hangs in its first parallel torch op (each module mutant "timed out" after minutes).
# One thread per process starts no pool.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
python -m mutmut run --max-children "${MUTMUT_CHILDREN:-2}" "${globs[@]}"
python -m mutmut export-cicd-stats >/dev/null
python - <<'PY'
import json

stats = json.load(open("mutants/mutmut-cicd-stats.json"))
caught = stats["killed"] + stats["timeout"]  # a mutant that hangs a test is caught too
judged = caught + stats["survived"] + stats["no_tests"]
print(f"mutation score: {caught} of {judged} mutants caught ({caught / max(judged, 1):.1%}); {stats}")
PY
python -m mutmut results
