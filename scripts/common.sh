# Shared by the seed-compatible scripts: parse --data_path=DIR, pass every other flag through to the launcher,
# run it, and echo the summary's final lines. Sourced with RECIPE (launcher flags) and MODE (full|performance|eval).
set -euo pipefail
data_path=""
passthrough=()
for arg in "$@"; do
  case "$arg" in
    --data_path=*) data_path="${arg#--data_path=}" ;;
    *) passthrough+=("$arg") ;;
  esac
done
if [ -z "$data_path" ]; then
  echo "$(basename "$0"): error: pass --data_path=/path/to/imagenet (a folder with train/ and val/)" >&2
  exit 2
fi
run="${RUN_NAME:-$(basename "$0" .sh)-$(date +%Y%m%d-%H%M%S)}"
output="output/${run}"
mkdir -p "$output"
echo "=> $(basename "$0"): ${MODE} run, output in ${output}"
# On an Ascend machine: CANN's environment and the recommended runtime settings, before the launcher starts.
# shellcheck source=/dev/null
source "$(dirname "${BASH_SOURCE[0]}")/env_npu.sh" --if-found
set +e
${PYTHON:-python3} -m resnext_nb.launch --data_path "$data_path" "${RECIPE[@]}" --output "$output" "${passthrough[@]}"
status=$?
set -e
summary=$(ls -t "$output"/*.log 2>/dev/null | grep -v '/train.log$' | head -1 || true)
if [ "$status" -ne 0 ] || [ -z "$summary" ]; then
  echo "=> $(basename "$0"): failed (exit ${status}); see ${output}/train.log" >&2
  exit $(( status == 0 ? 1 : status ))
fi
echo "=> final lines of ${output}/train.log:"
tail -n 3 "$output/train.log"
echo "=> summary ${summary}:"
cat "$summary"
