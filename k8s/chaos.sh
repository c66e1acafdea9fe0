#!/usr/bin/env bash
# Chaos test for a ramraft StatefulSet on a real cluster.
#
# Starts a workload pod in the namespace that runs
#     ramraft chaos --endpoints <client Service>:7000 --duration D \
#         --clients N --keys K --history /tmp/history.jsonl
# (N clients with sessions write and read K keys through the client Service,
# every operation is recorded, every key is read at the end, and the history
# is checked: linearizable, no acknowledged write lost), and meanwhile
# force-deletes random ramraft pods:
#     kubectl delete pod ramraft-N --grace-period=0 --force
# No faults in the last --settle seconds, so the workload's final reads run on
# a healed cluster. The history and the fault log are copied back; the script
# exits with the workload's exit code.
#
# Usage: k8s/chaos.sh [options]
#   -n, --namespace NS     namespace of the StatefulSet (default: kubectl's current)
#   --context CTX          kubectl context
#   --duration SECONDS     workload duration (default 300)
#   --interval SECONDS     mean time between pod deletions (default 20; each gap
#                          is uniform in [interval/2, 3*interval/2])
#   --settle SECONDS       fault-free tail of the run (default 30)
#   --history FILE         where to write the history (default chaos-<time>.jsonl);
#                          the fault log goes to FILE.faults, the workload's
#                          report to FILE.log
#   --clients N            concurrent workload clients (default 4)
#   --keys K               keys they share (default 5)
#   --statefulset NAME     (default ramraft)
#   --service NAME         client Service (default ramraft)
#   --port PORT            client gRPC port (default 7000)
#   --image IMAGE          workload image (default: the StatefulSet's image)
#   --overlap              delete pods even while some are not Ready (may take
#                          a quorum down: tests unavailability, not only failover)
#   --keep                 keep the workload pod afterwards
# Exit: the workload's exit code (0 pass; 1 violation: not linearizable or an
# acknowledged write lost; 3 no verdict: final reads failed); 2 for bad usage;
# 3 if the run could not start or finish (cluster not ready, workload pod
# failed, no result).
# Re-check a copied history offline: ramraft chaos --check-only FILE
set -euo pipefail

NS=""
CONTEXT=""
DURATION=300
INTERVAL=20
SETTLE=30
HISTORY="chaos-$(date +%Y%m%dT%H%M%S).jsonl"
STS=ramraft
SERVICE=ramraft
PORT=7000
IMAGE=""
OVERLAP=0
KEEP=0
CLIENTS=4
KEYS=5

# The header comment above, up to the first line that is not a comment.
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
die() { printf 'chaos.sh: %s\n' "$1" >&2; exit "${2:-3}"; }
log() { printf '%s chaos.sh: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
is_int() { [[ $1 =~ ^[0-9]+$ ]]; }

while [ $# -gt 0 ]; do
  case "$1" in
    -n|--namespace) NS=${2:?}; shift 2 ;;
    --context) CONTEXT=${2:?}; shift 2 ;;
    --duration) DURATION=${2:?}; shift 2 ;;
    --interval) INTERVAL=${2:?}; shift 2 ;;
    --settle) SETTLE=${2:?}; shift 2 ;;
    --history) HISTORY=${2:?}; shift 2 ;;
    --statefulset) STS=${2:?}; shift 2 ;;
    --service) SERVICE=${2:?}; shift 2 ;;
    --port) PORT=${2:?}; shift 2 ;;
    --image) IMAGE=${2:?}; shift 2 ;;
    --clients) CLIENTS=${2:?}; shift 2 ;;
    --keys) KEYS=${2:?}; shift 2 ;;
    --overlap) OVERLAP=1; shift ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" 2 ;;
  esac
done
for v in DURATION INTERVAL SETTLE PORT CLIENTS KEYS; do
  is_int "${!v}" || die "--${v,,} must be a whole number, got '${!v}'" 2
done
[ "$INTERVAL" -ge 1 ] || die "--interval must be at least 1" 2
if [ "$CLIENTS" -lt 1 ] || [ "$KEYS" -lt 1 ]; then
  die "--clients and --keys must be at least 1" 2
fi
[ "$SETTLE" -lt "$DURATION" ] || die "--settle ($SETTLE) must be shorter than --duration ($DURATION)" 2

KUBECTL=(kubectl)
[ -n "$CONTEXT" ] && KUBECTL+=(--context "$CONTEXT")
[ -n "$NS" ] && KUBECTL+=(--namespace "$NS")
k() { "${KUBECTL[@]}" "$@"; }

command -v kubectl >/dev/null || die "kubectl not found"

# -- the cluster before we start ------------------------------------------------
replicas=$(k get statefulset "$STS" -o jsonpath='{.spec.replicas}') \
  || die "no StatefulSet $STS (namespace ${NS:-current})"
if ! is_int "$replicas" || [ "$replicas" -lt 1 ]; then
  die "StatefulSet $STS has replicas '$replicas'"
fi
[ -n "$IMAGE" ] || IMAGE=$(k get statefulset "$STS" -o jsonpath='{.spec.template.spec.containers[0].image}')
namespace=${NS:-$(k config view --minify -o jsonpath='{..namespace}' 2>/dev/null || true)}
namespace=${namespace:-default}
ENDPOINTS="$SERVICE.$namespace.svc:$PORT"

log "waiting for $STS ($replicas replicas) to be ready"
k rollout status "statefulset/$STS" --timeout=300s >&2 || die "StatefulSet $STS is not ready"

# -- the workload pod -----------------------------------------------------------
POD="$STS-chaos-$(date +%s)-$RANDOM"
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  if [ "$KEEP" = 0 ]; then
    k delete pod "$POD" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "starting workload pod $POD ($IMAGE) against $ENDPOINTS for ${DURATION}s"
# A restricted-profile pod; the workload's own exit code is kept in /tmp/rc and
# the pod then idles so that the history can be read back with kubectl exec.
k apply -f - >/dev/null <<EOF || die "could not create the workload pod"
apiVersion: v1
kind: Pod
metadata:
  name: $POD
  labels:
    app.kubernetes.io/name: ramraft-chaos
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  enableServiceLinks: false
  securityContext:
    runAsNonRoot: true
    runAsUser: 10001
    seccompProfile:
      type: RuntimeDefault
  containers:
    - name: workload
      image: $IMAGE
      env:
        - name: ENDPOINTS
          value: "$ENDPOINTS"
        - name: DURATION
          value: "$DURATION"
      command:
        - sh
        - -c
        - >-
          ramraft chaos --endpoints "\$ENDPOINTS" --duration "\$DURATION"
          --clients $CLIENTS --keys $KEYS
          --history /tmp/history.jsonl; echo \$? > /tmp/rc; exec sleep 86400
      securityContext:
        allowPrivilegeEscalation: false
        capabilities:
          drop: [ALL]
EOF
k wait --for=condition=Ready "pod/$POD" --timeout=180s >&2 || die "workload pod $POD did not start"
started=$SECONDS

# -- the nemesis ------------------------------------------------------------------
FAULTS="$HISTORY.faults"
: > "$FAULTS"
faults=0
sleep_ms() { sleep "$(($1 / 1000)).$(printf '%03d' $(($1 % 1000)))"; }
while :; do
  gap_ms=$((INTERVAL * 500 + RANDOM % (INTERVAL * 1000 + 1)))
  elapsed_ms=$(((SECONDS - started) * 1000))
  [ $((elapsed_ms + gap_ms)) -lt $(((DURATION - SETTLE) * 1000)) ] || break
  sleep_ms "$gap_ms"
  if [ "$OVERLAP" = 0 ]; then
    # One fault at a time: wait until the set has recovered from the last one.
    k rollout status "statefulset/$STS" --timeout=300s >/dev/null 2>&1 \
      || log "warning: $STS did not recover within 300s; deleting anyway"
  fi
  victim="$STS-$((RANDOM % replicas))"
  log "deleting pod $victim"
  if k delete pod "$victim" --grace-period=0 --force --wait=false >/dev/null 2>&1; then
    faults=$((faults + 1))
    printf '%s delete-pod %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$victim" >> "$FAULTS"
  else
    log "warning: could not delete $victim"
  fi
done
log "nemesis done: $faults pod deletions; settling"

# -- the verdict --------------------------------------------------------------------
deadline=$((started + DURATION + 600))
rc=""
while [ "$SECONDS" -lt "$deadline" ]; do
  if rc=$(k exec "$POD" -- cat /tmp/rc 2>/dev/null) && is_int "$rc"; then
    break
  fi
  phase=$(k get pod "$POD" -o jsonpath='{.status.phase}' 2>/dev/null || true)
  [ "$phase" = Running ] || die "workload pod $POD is $phase; see kubectl logs $POD"
  rc=""
  sleep 2
done
is_int "$rc" || die "no result from the workload within $((DURATION + 600))s"
k exec "$POD" -- cat /tmp/history.jsonl > "$HISTORY" || log "warning: could not copy the history"
k logs "$POD" > "$HISTORY.log" 2>&1 || true
# The workload's own report: counts, linearizable, lost writes, verdict.
grep -E '^(operations|linearizable|lost acknowledged|verdict):' "$HISTORY.log" >&2 || true
log "workload exited $rc; $faults faults; history in $HISTORY, faults in $FAULTS, output in $HISTORY.log"
exit "$rc"
