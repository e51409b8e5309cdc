#!/usr/bin/env bash
# The protocol health checks against real peers: dcmtk's storescp and pynetdicom (two independent DICOM
# implementations) for dicom-echo, an MLLP listener for hl7-mllp, and shell commands for external. lbd runs them;
# lbctl status shows each server's health and lbd's log gives the reason for each one that is down.
source "$(dirname "$0")/lib.sh"
set +e
# pynetdicom lives in .build/python (installed there by .ci/run) so its own storescp/echoscu scripts never shadow
# dcmtk's on PATH.
export PYTHONPATH="$PWD/.build/python${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import pynetdicom" 2>/dev/null \
    || fail "pynetdicom missing: python3 -m pip install --target .build/python pynetdicom"
base=$((16000 + RANDOM % 800))
p() { echo $((base + $1)); }
# Servers start as up in lbd, so "up" proves nothing until it was reached from "down": the peers that must pass
# (dcmtk-storescp, pynetdicom-pacs, engine-aa, script-ok) start only after lbd has seen them fail.
storescp --refuse "$(p 2)" & pids+=($!)
python3 Tests/integration/clinical-peers.py verification-scp OTHER "$(p 3)" require-called & pids+=($!)
python3 Tests/integration/clinical-peers.py verification-scp PACS "$(p 4)" status 0110 & pids+=($!)
python3 Tests/integration/clinical-peers.py mllp "$(p 12)" AE "unknown message type" & pids+=($!)
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; fail "nothing listens on $1"; }
for port in $(p 2) $(p 3) $(p 4) $(p 12); do wait_port "$port"; done
# The external check runs as nobody: its flag lives where nobody can look.
mkdir -m 755 "$work/pub"
chmod 711 "$work"
cat > "$work/lb.yaml" <<YAML
virtual_services:
  - name: CoreServerDICOM-104
    vip: 127.0.0.1
    ports: [$(p 20)]
    mode: l7-tcp
    health_check: {type: dicom-echo, calling_ae: LB-CHECK, called_ae: PACS, interval: 1s, timeout: 800ms, rise: 1, fall: 1}
    real_servers:
      - {name: dcmtk-storescp, address: 127.0.0.1, port: $(p 1)}
      - {name: dcmtk-refusing, address: 127.0.0.1, port: $(p 2)}
      - {name: pynetdicom-other-ae, address: 127.0.0.1, port: $(p 3)}
      - {name: pynetdicom-failing, address: 127.0.0.1, port: $(p 4)}
      - {name: pynetdicom-pacs, address: 127.0.0.1, port: $(p 5)}
      - {name: stopped, address: 127.0.0.1, port: $(p 6)}
  - name: CoreServerHL7-2310
    vip: 127.0.0.1
    ports: [$(p 21)]
    mode: l7-tcp
    health_check: {type: hl7-mllp, interval: 1s, timeout: 800ms, rise: 1, fall: 1}
    real_servers:
      - {name: engine-aa, address: 127.0.0.1, port: $(p 11)}
      - {name: engine-ae, address: 127.0.0.1, port: $(p 12)}
  - name: Scripted
    vip: 127.0.0.1
    ports: [$(p 22)]
    mode: l7-tcp
    health_check: {type: external, command: 'test "\$(id -un)" = nobody && test -e $work/pub/ready && test "\$LB_SERVER_PORT" = $(p 1) && echo fine', interval: 1s, timeout: 800ms, rise: 1, fall: 1}
    real_servers:
      - {name: script-ok, address: 127.0.0.1, port: $(p 1)}
      - {name: script-fails, address: 127.0.0.1, port: $(p 2)}
YAML
"$bin/lbd" --config "$work/lb.yaml" --threads 1 --socket "$work/lbd.sock" --state-dir "$work/state" > "$work/lbd.log" 2>&1 & pids+=($!)
status() { "$bin/lbctl" --socket "$work/lbd.sock" status --format json > "$work/status.json" 2>/dev/null; }
health() { python3 -c "
import json, sys
for s in json.load(open('$work/status.json')):
    for r in s['servers']:
        if r['name'] == '$1': print(r['health'])"; }
wait_health() {  # SERVER HEALTH: waits up to 15 s (checks run every second)
    for _ in $(seq 75); do status && [ "$(health "$1")" = "$2" ] && return 0; sleep 0.2; done
    fail "$1 should be $2, is $(health "$1")"
}
expect() {  # SERVER HEALTH [REASON]
    wait_health "$1" "$2"
    [ -z "${3:-}" ] || holds "reason=$3.* server=$1 " "$work/lbd.log" || fail "$1: no \"$3\" in the log"
    echo "$1: $2${3:+ ($3)}"
}
# First: each must-pass server fails its check for the reason its check gives.
expect dcmtk-storescp down "connection refused"
expect pynetdicom-pacs down "connection refused"
expect engine-aa down "connection refused"
expect script-ok down "command exited 1"
# Then their peers start (and the script's flag appears): each comes back up, and lbd says so.
storescp --aetitle PACS --output-directory "$work" "$(p 1)" & pids+=($!)
python3 Tests/integration/clinical-peers.py verification-scp PACS "$(p 5)" require-called & pids+=($!)
python3 Tests/integration/clinical-peers.py mllp "$(p 11)" AA & pids+=($!)
touch "$work/pub/ready"
for server in dcmtk-storescp pynetdicom-pacs engine-aa script-ok; do
    expect "$server" up
    grep " server=$server " "$work/lbd.log" | holds "real server up$" || fail "$server: no \"real server up\" in the log"
done
expect dcmtk-refusing down "association rejected: rejected by the service user, no reason given"
expect pynetdicom-other-ae down "association rejected: called AE title not recognized"
expect pynetdicom-failing down "C-ECHO status 0x0110"
expect stopped down "connection refused"
expect engine-ae down "HL7 acknowledgement AE: unknown message type"
expect script-fails down "command exited 1"
echo "clinical health checks: passed"
