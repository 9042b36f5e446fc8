#!/usr/bin/env bash
# Mutation testing of the PPO math with mutmut 3 (not part of CI): every small change mutmut makes to
# lit_codegen/ppo.py (an operator, a constant, a dropped argument) is run against tests/test_ppo_math.py; a mutant
# that no test fails ("survived") is a bug the suite would let through, or an equivalent change.
#
# Settings: the [mutmut] section of setup.cfg (module and tests). Work and results: mutants/ (git-ignored).
#   scripts/mutation.sh                                   all mutants of the configured module
#   scripts/mutation.sh 'lit_codegen.ppo.x_policy_loss*'  only the mutants of one function
#   MUTMUT_CHILDREN=4 scripts/mutation.sh                 more parallel test processes (default 2)
# Then: `mutmut show NAME` prints a survivor's diff. Needs `pip install mutmut` (3.x).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m mutmut run --max-children "${MUTMUT_CHILDREN:-2}" "$@"
python -m mutmut export-cicd-stats >/dev/null
python - <<'PY'
import json

stats = json.load(open("mutants/mutmut-cicd-stats.json"))
caught = stats["killed"] + stats["timeout"]  # a mutant that hangs a test is caught too
judged = caught + stats["survived"] + stats["no_tests"]
print(f"mutation score: {caught} of {judged} mutants caught ({caught / max(judged, 1):.1%}); {stats}")
PY
python -m mutmut results
