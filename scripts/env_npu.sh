# shellcheck shell=bash
# The Ascend environment for a training job: CANN's set_env.sh, then the runtime settings the Ascend recipe's
# env_npu.sh set, updated where the recommendation changed. Prints what it set.
# usage: source scripts/env_npu.sh            (the train_*.sh scripts source it themselves when a toolkit is found)
#        source scripts/env_npu.sh --if-found (say nothing on a machine without the toolkit)
# A variable that is already set is kept, so `TASK_QUEUE_ENABLE=1 bash scripts/train_full_8p.sh ...` still wins.
# Sourced, not run: it never exits the shell, and it works under `set -euo pipefail`.

_env_npu_quiet=0
[ "${1:-}" = "--if-found" ] && _env_npu_quiet=1

# CANN's set_env.sh: $ASCEND_HOME first, then the path CANN's installer records, then the usual install folders.
# resnext_nb.device.CANN_SET_ENV lists the same places.
_env_npu_recorded=""
if [ -f /etc/Ascend/ascend_cann_install.info ]; then
  _env_npu_recorded=$(sed -n 's/^Install_Path=//p' /etc/Ascend/ascend_cann_install.info | head -n 1)
fi
_env_npu_script=""
for _env_npu_c in \
    ${ASCEND_HOME:+"$ASCEND_HOME/ascend-toolkit/set_env.sh"} ${ASCEND_HOME:+"$ASCEND_HOME/set_env.sh"} \
    ${_env_npu_recorded:+"$_env_npu_recorded/ascend-toolkit/set_env.sh"} \
    /usr/local/Ascend/ascend-toolkit/set_env.sh /usr/local/Ascend/cann/set_env.sh /usr/local/Ascend/nnae/set_env.sh \
    "${HOME:-/root}/Ascend/ascend-toolkit/set_env.sh"; do
  if [ -f "$_env_npu_c" ]; then _env_npu_script=$_env_npu_c; break; fi
done

if [ -z "$_env_npu_script" ]; then
  if [ "$_env_npu_quiet" = 0 ]; then
    echo "env_npu.sh: no Ascend toolkit found (no set_env.sh under \$ASCEND_HOME, /usr/local/Ascend or ~/Ascend): nothing set" >&2
  fi
else
  _env_npu_set=()
  if [ -n "${ASCEND_HOME_PATH:-}${ASCEND_TOOLKIT_HOME:-}" ]; then
    _env_npu_set+=("CANN already sourced (${ASCEND_HOME_PATH:-$ASCEND_TOOLKIT_HOME})")
  else
    # CANN's script reads variables that may be unset and runs commands that may fail: relax -u and -e around it.
    _env_npu_flags=$-
    set +eu
    # shellcheck source=/dev/null
    source "$_env_npu_script"
    case $_env_npu_flags in *u*) set -u ;; esac
    case $_env_npu_flags in *e*) set -e ;; esac
    _env_npu_set+=("sourced $_env_npu_script")
  fi

  _env_npu_default() {  # NAME VALUE: export NAME=VALUE unless NAME is already set
    if [ -z "${!1+x}" ]; then export "$1=$2"; _env_npu_set+=("$1=$2"); else _env_npu_set+=("$1=${!1} (kept)"); fi
  }
  _env_npu_default TASK_QUEUE_ENABLE 2            # the recipe had 1; 2 is the current two-level task queue
  _env_npu_default CPU_AFFINITY_CONF 1            # bind host threads to cores near the card (torch_npu >= 2.1)
  _env_npu_default HCCL_WHITELIST_DISABLE 1       # as the recipe: no HCCL trust list for the nodes of the job
  _env_npu_default HCCL_CONNECT_TIMEOUT 1200      # seconds to build the 8-card links (the recipe's value; default 120)
  _env_npu_default HCCL_EXEC_TIMEOUT 1800         # seconds a collective may wait for a slow rank before failing
  _env_npu_default ASCEND_GLOBAL_LOG_LEVEL 3      # CANN logs errors only, as the recipe
  _env_npu_default ASCEND_SLOG_PRINT_TO_STDOUT 0  # CANN logs to its files, not into train.log
  _env_npu_default ASCEND_GLOBAL_EVENT_ENABLE 0
  if [ -z "${HCCL_IF_IP+x}" ] && _env_npu_ip=$(hostname -I 2>/dev/null | awk '{print $1}') && [ -n "$_env_npu_ip" ]; then
    _env_npu_default HCCL_IF_IP "$_env_npu_ip"    # the recipe's: HCCL talks over this host's first address
  fi
  # Not carried over, as current torch_npu ignores them: PTCOPY_ENABLE, COMBINED_ENABLE, DYNAMIC_OP.

  echo "env_npu.sh: ${_env_npu_set[*]}"
  unset -f _env_npu_default
fi
unset _env_npu_quiet _env_npu_recorded _env_npu_script _env_npu_c _env_npu_set _env_npu_flags _env_npu_ip
