#!/bin/sh
# Replaces the cache node of pod tokengate-cache-ORDINAL, whose disk was lost, by a new member
# under a new id (docs/runbooks.md, "A cache node lost its disk"):
#
#   1. records the new id for the pod in the ConfigMap tokengate-cache-ids;
#   2. deletes the pod's claim and the pod: the StatefulSet brings it back with an empty
#      volume, under the new id, joining as a learner;
#   3. once it has caught up, makes it a voter in place of the old id (cachectl members replace).
#
# Usage: replace-cache-node.sh ORDINAL    (NAMESPACE defaults to tokengate; needs kubectl)
# cachectl runs inside another cache-node pod, with that pod's credentials.
set -eu

ordinal="${1:?usage: replace-cache-node.sh ORDINAL}"
case "$ordinal" in *[!0-9]*) echo "ORDINAL is a number: $ordinal" >&2; exit 2 ;; esac
namespace="${NAMESPACE:-tokengate}"
set_name=tokengate-cache
pod="$set_name-$ordinal"
ids=tokengate-cache-ids

kc() { kubectl -n "$namespace" "$@"; }
helper="$set_name-0"
[ "$ordinal" -ne 0 ] || helper="$set_name-1"
ctl() { kc exec "$helper" -c cache-node -- cachectl "$@"; }

# The id the pod runs under: the one a previous replacement recorded, else its ordinal's.
old="$(kc get configmap "$ids" -o go-template="{{ index .data \"$pod\" }}" 2>/dev/null || true)"
case "$old" in '' | *[!0-9]*) old=$((ordinal + 1)) ;; esac

# A new id is never reused: above every id the cluster has (and above 1000, clear of the ids
# scaling up gives pods: ordinal + 1).
highest="$(ctl status -o json | grep -o '"id": *[0-9]*' | grep -o '[0-9]*$' | sort -n | tail -n 1)"
new=$(( ${highest:-0} > 1000 ? ${highest:-0} + 1 : 1001 ))

echo "pod $pod: node $old is replaced by node $new"
kc get configmap "$ids" >/dev/null 2>&1 || kc create configmap "$ids"
kc patch configmap "$ids" --type merge -p "{\"data\":{\"$pod\":\"$new\"}}"
# The claim goes once its pod is gone; the StatefulSet makes the pod and a new claim again.
kc delete pvc "data-$pod" --wait=false --ignore-not-found
kc delete pod "$pod"
until kc get pod "$pod" >/dev/null 2>&1; do sleep 2; done
# Ready once it follows the leader as a learner.
kc wait --for=condition=Ready "pod/$pod" --timeout=10m
ctl members replace "$old" "$new"
ctl status
