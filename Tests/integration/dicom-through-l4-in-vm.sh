#!/usr/bin/env bash
# A DICOM study through Layer 4 on the real kernel (scripts/ipvs-vm): dcmtk storescu in a client namespace sends a
# generated study to an l4-nat VIP (two storescp real servers whose gateway is the load balancer) and to an
# l4-snat VIP (a storescp with no route back); lbd programs IPVS and checks the servers with dicom-echo. Every file
# must arrive byte-identical, the NAT study spread over both servers.
source "$(dirname "$0")/lib.sh"
dir="$PWD/.ipvs-vm-cache/dicom-l4"
rm -rf "$dir"; mkdir -p "$dir"
make_study "$dir/study" 6 512
cp Tests/integration/vm/dicom-l4.sh Tests/integration/vm/topology.sh "$dir/"
out=$(IPVS_VM_TIMEOUT=300 scripts/ipvs-vm bash "$dir/dicom-l4.sh" "$bin" "$dir" 2>&1) || true
echo "$out"
grep "^wait timed out" <<<"$out" && fail "a wait in the VM ran out"
grep -q "storescu FAILED" <<<"$out" && fail "a storescu run failed"
grep -qE -- "-> 10\.0\.1\.11:11112 +Masq +100 " <<<"$out" || fail "pacs1 not healthy in IPVS (dicom-echo)"
grep -qE -- "-> 10\.0\.1\.13:11112 +Masq +100 " <<<"$out" || fail "pacs3 not healthy in IPVS (dicom-echo)"
[ "$(ls "$dir/pacs1" | wc -l)" -gt 0 ] && [ "$(ls "$dir/pacs2" | wc -l)" -gt 0 ] || fail "the NAT study was not spread over both servers"
echo "l4-nat:  pacs1 $(ls "$dir/pacs1" | wc -l) files, pacs2 $(ls "$dir/pacs2" | wc -l) files"
python3 Tests/integration/compare-datasets.py "$dir/study" "$dir/pacs1" "$dir/pacs2" || fail "l4-nat: data sets differ"
echo "l4-snat: pacs3 $(ls "$dir/pacs3" | wc -l) files"
python3 Tests/integration/compare-datasets.py "$dir/study" "$dir/pacs3" || fail "l4-snat: data sets differ"
echo "DICOM through l4-nat and l4-snat: passed"
