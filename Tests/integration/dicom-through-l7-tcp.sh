#!/usr/bin/env bash
# DICOM through an l7-tcp VIP, with real DICOM peers (dcmtk): storescu sends a generated multi-file study through
# lbd to two storescp real servers; every file received must be byte-identical to the one sent.
# Needs: dcmtk (storescu, storescp, img2dcm, echoscu), python3. All traffic stays on 127.0.0.1.
source "$(dirname "$0")/lib.sh"

base=$((26000 + $$ % 500 * 2))
vip=$base; scp1=$((base + 1000)); scp2=$((base + 1001))

# A study of 8 images (768x768 RGB, ~1.7 MB each), one study and series UID.
mkdir -p "$work/bmp" "$work/study" "$work/rs1" "$work/rs2"
make_study "$work/study" 8 768

# Two real servers; --filename-extension keeps names predictable, -uf names files by SOP instance UID.
storescp --aetitle ANY-SCP -od "$work/rs1" -uf "$scp1" & pids+=($!)
storescp --aetitle ANY-SCP -od "$work/rs2" -uf "$scp2" & pids+=($!)

cat > "$work/lb.yaml" <<YAML
virtual_services:
  - name: CoreServerDICOM-104
    vip: 127.0.0.1
    ports: [$vip]
    mode: l7-tcp
    scheduler: roundrobin
    health_check: {type: connect, interval: 500ms}
    real_servers:
      - {name: pacs-1, address: 127.0.0.1, port: $scp1}
      - {name: pacs-2, address: 127.0.0.1, port: $scp2}
YAML
"$bin/lbctl" config check "$work/lb.yaml"
"$bin/lbd" --config "$work/lb.yaml" --threads 2 --log-level warning --socket "$work/lbd.sock" --state-dir "$work/state" & pids+=($!)
for _ in $(seq 50); do echoscu -q 127.0.0.1 "$vip" 2>/dev/null && break; sleep 0.1; done

# C-ECHO through the VIP, then the study: one association per file, so round robin spreads it over both servers.
echoscu -aec ANY-SCP 127.0.0.1 "$vip"
for file in "$work"/study/*.dcm; do
    storescu -aec ANY-SCP 127.0.0.1 "$vip" "$file"
done

sent=$(ls "$work/study" | wc -l)
received1=$(ls "$work/rs1" | wc -l); received2=$(ls "$work/rs2" | wc -l)
echo "sent $sent files; pacs-1 received $received1, pacs-2 received $received2"
[ $((received1 + received2)) -eq "$sent" ] || { echo "FAIL: file count" >&2; exit 1; }
[ "$received1" -gt 0 ] && [ "$received2" -gt 0 ] || { echo "FAIL: the study was not spread over both servers" >&2; exit 1; }

python3 Tests/integration/compare-datasets.py "$work/study" "$work/rs1" "$work/rs2" || exit 1
echo "DICOM through l7-tcp: passed"
