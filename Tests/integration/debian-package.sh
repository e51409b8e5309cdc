#!/usr/bin/env bash
# The Debian package: scripts/package builds dist/lb_VERSION_ARCH.deb (release build, Swift runtime linked in) and
# lintian finds no error in it; the binaries need no Swift toolchain (no libswift*.so); the package's control data
# is what lb needs. Then, inside the IPVS VM (its root file system is a throw-away overlay of this machine's, so
# nothing is installed here): dpkg -i, lbd --check on the packaged /etc/lb/lb.yaml, the installed lbd runs and
# answers lbctl over the packaged paths, man -w finds the pages, the bash/zsh/fish completions are in place, and
# dpkg -r removes everything but the conffile (dpkg --purge takes that too). Finally the packaged unit runs under a
# real systemd in the VM: start (Type=notify), IPVS under the capability bounding set, lbctl mode under
# ProtectSystem=strict, reloads refused and applied, the audit trail, stop.
# LB_DEB=PATH tests an already built package instead of building one.
source "$(dirname "$0")/lib.sh"
export PATH="/opt/swift/usr/bin:$PATH"
if [ -n "${LB_DEB:-}" ]; then
    deb=$LB_DEB
    command -v lintian > /dev/null || fail "lintian missing (scripts/setup test installs it)"
    lintian --fail-on error "$deb" || fail "lintian reports errors in $deb"
else
    started=$(date +%s)
    scripts/package --lintian > "$work/package.log" 2>&1 || { cat "$work/package.log" >&2; fail "scripts/package --lintian"; }
    grep -E "^(== |[EWO]: )" "$work/package.log"   # lintian's errors (none), warnings and overrides
    deb=$(sed -n 's/^== built \([^ ]*\) .*/\1/p' "$work/package.log")
    echo "scripts/package --lintian took $(( $(date +%s) - started )) s"
fi
[ -f "$deb" ] || fail "no package at $deb"

fields=$(dpkg-deb --field "$deb")
echo "$fields" | grep -E '^(Package|Version|Architecture|Depends|Recommends|Suggests):'
for dependency in libnl-3-200 libnl-genl-3-200 libnl-route-3-200 libssl3 iptables libc6; do
    grep -qE "^Depends:.*\b$dependency\b" <<<"$fields" || fail "Depends lacks $dependency"
done
# The binaries are linked with packed relocations, which glibc reads from 2.36 on (GLIBC_ABI_DT_RELR).
libc_needed=$(sed -nE 's/^Depends:.*libc6 \(>= ([0-9.]+)\).*/\1/p' <<<"$fields")
[ -n "$libc_needed" ] && dpkg --compare-versions "$libc_needed" ge 2.36 \
    || fail "Depends asks libc6 >= '$libc_needed'; packed relocations need 2.36"
grep -qE '^Recommends:.*\bipvsadm\b.*\bkeepalived\b' <<<"$fields" || fail "Recommends lacks ipvsadm, keepalived (a pair)"
grep -qE '^Suggests:.*\bdcmtk\b' <<<"$fields" || fail "Suggests lacks dcmtk"
[ "$(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles)" = /etc/lb/lb.yaml ] || fail "conffiles is not /etc/lb/lb.yaml"
contents=$(dpkg-deb --contents "$deb" | awk '{print $6}')
for path in ./usr/sbin/lbd ./usr/bin/lbctl ./usr/share/man/man8/lbd.8.gz ./usr/share/man/man8/lbctl.8.gz \
    ./usr/share/man/man5/lb.yaml.5.gz ./usr/share/bash-completion/completions/lbctl ./usr/share/zsh/vendor-completions/_lbctl \
    ./usr/share/fish/vendor_completions.d/lbctl.fish ./lib/systemd/system/lbd.service ./etc/lb/lb.yaml \
    ./usr/share/doc/lb/examples/agfa-enterprise-imaging.yaml ./usr/share/doc/lb/copyright; do
    grep -qxF "$path" <<<"$contents" || fail "the package lacks $path"
done
dpkg-deb -x "$deb" "$work/unpacked"
for binary in usr/sbin/lbd usr/bin/lbctl; do
    ldd "$work/unpacked/$binary" | grep -i swift && fail "$binary needs the Swift toolchain's libraries"
done
echo "package: lintian clean of errors, dependencies, conffile, contents; the binaries need no Swift runtime"

# Install, use, remove, in the VM (never on this machine). The packaged unit runs lbd with these paths.
mkdir -p .ipvs-vm-cache/package && cp "$deb" .ipvs-vm-cache/package/lb.deb   # not in the cache itself: preparing the VM deletes *.deb there
out=$(IPVS_VM_NATIVE=no scripts/ipvs-vm bash -c '
    set -u
    step() { echo "== $*"; }
    step install; dpkg -i .ipvs-vm-cache/package/lb.deb 2>&1 | tail -3; echo "dpkg -i: ${PIPESTATUS[0]}"
    step check; lbd --config /etc/lb/lb.yaml --check; echo "check: $?"
    lbctl config check /usr/share/doc/lb/examples/agfa-enterprise-imaging.yaml; echo "example check: $?"
    step man; man -w lbctl; man -w lbd; man -w 5 lb.yaml
    step completions; ls /usr/share/bash-completion/completions/lbctl /usr/share/zsh/vendor-completions/_lbctl /usr/share/fish/vendor_completions.d/lbctl.fish
    bash -c "source /usr/share/bash-completion/completions/lbctl && complete -p lbctl"
    step run; mkdir -p /run/lb
    /usr/sbin/lbd --config /etc/lb/lb.yaml --socket /run/lb/lbd.sock --state-dir /var/lib/lb --http 127.0.0.1:9780 > /tmp/lbd.log 2>&1 & pid=$!
    for i in $(seq 100); do lbctl status > /dev/null 2>&1 && break; sleep 0.1; done
    lbctl status; echo "status: $?"
    lbctl drain --server web-1 > /dev/null; lbctl audit
    kill -TERM $pid; wait $pid; echo "lbd exit: $?"
    step remove; dpkg -r lb > /dev/null 2>&1; echo "dpkg -r: $?"
    for f in /usr/sbin/lbd /usr/bin/lbctl /usr/share/man/man8/lbctl.8.gz /lib/systemd/system/lbd.service /usr/share/bash-completion/completions/lbctl /usr/share/doc/lb/copyright; do
        [ -e "$f" ] && echo "left behind: $f"
    done
    [ -f /etc/lb/lb.yaml ] && echo "conffile kept"
    dpkg -s lb 2>/dev/null | grep "^Status:"
    step purge; dpkg --purge lb > /dev/null 2>&1; echo "dpkg --purge: $?"
    [ -e /etc/lb/lb.yaml ] || echo "conffile purged"
    step end')
echo "$out"
section() { sed -n "/^== $1\$/,/^== /p" <<<"$out"; }
grep -q "dpkg -i: 0" <<<"$out" || fail "dpkg -i failed"
section check | holds "^check: 0" || fail "lbd --config /etc/lb/lb.yaml --check failed"
section check | holds "^example check: 0" || fail "the packaged AGFA example does not check"
section man | holds "^/usr/share/man/man8/lbctl.8.gz$" || fail "man -w lbctl"
section man | holds "^/usr/share/man/man5/lb.yaml.5.gz$" || fail "man -w 5 lb.yaml"
section completions | holds -E "^complete .*-F _lbctl lbctl$" || fail "the bash completion does not register"
section run | holds -E "^example-web +l7-http 127.0.0.1 +8080/tcp" || fail "the installed lbd did not serve the packaged config"
section run | holds -E " root +0 +drain +web-1 \(every service\) +ok" || fail "the installed lbd's audit trail"
section run | holds "lbd exit: 0" || fail "the installed lbd did not stop cleanly"
grep -q "dpkg -r: 0" <<<"$out" || fail "dpkg -r failed"
section remove | grep "left behind" && fail "dpkg -r left files behind"
section remove | holds "conffile kept" || fail "dpkg -r removed the conffile"
section remove | holds "Status: deinstall ok config-files" || fail "after dpkg -r the package should be config-files"
section purge | holds "conffile purged" || fail "dpkg --purge kept /etc/lb/lb.yaml"
echo "installed, used and removed in the VM"

# The packaged unit under a real systemd (PID 1 of its own PID namespace in the VM, the way containers run it): the
# hardening (capability bounding set, ProtectSystem=strict, ...) must leave lbd able to program IPVS, write its
# state, audit trail and /etc/lb/lb.yaml (lbctl mode); Type=notify makes `systemctl start` return with every
# listener bound; `systemctl reload` (lbctl reload) reports a bad config and keeps lbd running; stop is clean.
vmdir=.ipvs-vm-cache/package
cat > "$vmdir/lb.yaml" <<'YAML'
virtual_services:
  - name: Web
    vip: 127.0.0.1
    ports: [8080]
    mode: l7-http
    health_check: {type: none}
    real_servers:
      - {name: web-1, address: 127.0.0.1, port: 8081}
  - name: DICOM-NAT
    vip: 10.0.0.40
    ports: [104]
    mode: l4-nat
    health_check: {type: none}
    real_servers:
      - {name: core-1, address: 10.0.1.11, port: 11112}
YAML
cat > "$vmdir/steps.sh" <<'STEPS'
# Run by lbtest.service inside the systemd under test; each check prints one line the host greps.
exec 2>&1
systemctl start lbd; echo "start: $?"
curl -s -o /dev/null -w 'status page right after start: %{http_code}\n' http://127.0.0.1:9780/
curl -s -o /dev/null -w "VIP right after start: %{http_code}\n" http://127.0.0.1:8080/   # lbd answers (its server is absent)
systemctl show lbd -p Type -p ActiveState -p StatusText
ipvsadm -Ln | grep -E "10.0.0.40:104|10.0.1.11:11112" | sed 's/^/ipvs: /'
lbctl drain DICOM-NAT core-1 > /dev/null; echo "drain: $?"
lbctl mode Web l7-tcp > /dev/null; echo "mode: $?"
grep -q "mode: l7-tcp" /etc/lb/lb.yaml && echo "config rewritten by lbctl mode"
echo "virtual_services: [" >> /etc/lb/lb.yaml
systemctl reload lbd > /dev/null 2>&1; echo "reload of a broken config: $?"
systemctl show lbd -p ActiveState -p StatusText
cp /etc/lb/lb.yaml.bak /etc/lb/lb.yaml; sed -i 's/mode: l7-http/mode: l7-tcp/' /etc/lb/lb.yaml
systemctl reload lbd; echo "reload: $?"
systemctl show lbd -p StatusText
lbctl audit | sed 's/^/audit: /'
stat -c 'audit.log: %U %a' /var/lib/lb/audit.log
systemctl stop lbd; echo "stop: $?"
systemctl show lbd -p ActiveState -p Result
sed 's/^/lbd log: /' "$(dirname "$0")/lbd.log"
STEPS
out=$(IPVS_VM_NATIVE=no scripts/ipvs-vm bash -c '
    set -u
    dpkg -i .ipvs-vm-cache/package/lb.deb > /dev/null 2>&1 || echo "dpkg -i failed"
    cp .ipvs-vm-cache/package/lb.yaml /etc/lb/lb.yaml
    ip link add lbt0 type dummy && ip addr add 10.0.1.254/24 dev lbt0 && ip link set lbt0 up
    modprobe ip_vs
    mountpoint -q /sys/fs/cgroup || mount -t cgroup2 none /sys/fs/cgroup
    # tmpfiles-setup walks the whole (9p) file system: a minute and a half under emulation, and nothing lbd needs.
    ln -sf /dev/null /etc/systemd/system/systemd-tmpfiles-setup.service
    printf "[Unit]\nRequires=lbtest.service\nAfter=lbtest.service\n" > /etc/systemd/system/lbtest.target
    printf "[Unit]\nSuccessAction=exit-force\nFailureAction=exit-force\n[Service]\nType=oneshot\nExecStart=/bin/bash %s\nStandardOutput=file:%s\n" \
        "$PWD/.ipvs-vm-cache/package/steps.sh" "$PWD/.ipvs-vm-cache/package/steps.log" > /etc/systemd/system/lbtest.service
    rm -f .ipvs-vm-cache/package/steps.log .ipvs-vm-cache/package/lbd.log
    # lbd'"'"'s output to a file the host reads (journald is not what is under test).
    mkdir -p /etc/systemd/system/lbd.service.d
    printf "[Service]\nStandardOutput=append:%s\nStandardError=inherit\n" "$PWD/.ipvs-vm-cache/package/lbd.log" \
        > /etc/systemd/system/lbd.service.d/test-output.conf
    timeout 200 unshare --pid --fork --mount-proc env container=lb-test /lib/systemd/systemd --unit=lbtest.target \
        --log-level=warning > /dev/null 2>&1
    echo "systemd exit: $?"
    cat .ipvs-vm-cache/package/steps.log')
echo "$out" | grep -v "^lbd log: "
expect() { grep -qE "$1" <<<"$out" || { echo "$out" | grep "^lbd log: " >&2; fail "under systemd: $2"; }; }
expect "^start: 0$" "systemctl start lbd failed"
expect "^status page right after start: 200$" "the status page did not answer when systemctl start returned"
expect "^VIP right after start: [1-5][0-9][0-9]$" "the VIP did not answer when systemctl start returned"
expect "^Type=notify$" "not Type=notify"
expect "^StatusText=serving 2 virtual services$" "no STATUS= from lbd"
expect "^ipvs: TCP  10.0.0.40:104 " "IPVS not programmed under the capability bounding set"
expect "^drain: 0$" "drain failed"
expect "^config rewritten by lbctl mode$" "lbctl mode could not rewrite /etc/lb/lb.yaml under ProtectSystem=strict"
expect "^reload of a broken config: [1-9]" "systemctl reload of a broken config succeeded"
expect "^StatusText=reload refused; serving the previous config$" "a refused reload not reported"
expect "^reload: 0$" "systemctl reload failed"
expect "^StatusText=reloaded$" "the reload not reported"
expect "^audit: .* root +0 +drain +DICOM-NAT/core-1 +ok$" "the audit trail under systemd"
expect "^audit: .* root +0 +reload +- +failed" "the refused reload not in the audit trail"
expect "^audit.log: root 640$" "audit.log ownership/mode"
expect "^stop: 0$" "systemctl stop failed"
expect "^Result=success$" "lbd did not stop cleanly"
expect "^lbd log: .*config loaded" "no output of lbd captured"
grep "^lbd log: .*Failed to set thread priority" <<<"$out" && fail "libdispatch could not set thread priority under the unit"
echo "the packaged unit under systemd: started (notify), IPVS programmed, mode, reload refused and applied, audit, stopped"
echo "Debian package: passed"
