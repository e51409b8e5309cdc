#!/usr/bin/env bash
# The Debian package: scripts/package builds dist/lb_VERSION_ARCH.deb (release build, Swift runtime linked in) and
# lintian finds no error in it; the binaries need no Swift toolchain (no libswift*.so); the package's control data
# is what lb needs. Then, inside the IPVS VM (its root file system is a throw-away overlay of this machine's, so
# nothing is installed here): dpkg -i, lbd --check on the packaged /etc/lb/lb.yaml, the installed lbd runs and
# answers lbctl over the packaged paths, man -w finds the pages, the bash/zsh/fish completions are in place, and
# dpkg -r removes everything but the conffile (dpkg --purge takes that too).
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
grep -qE '^Recommends:.*\bipvsadm\b' <<<"$fields" || fail "Recommends lacks ipvsadm"
grep -qE '^Suggests:.*\bkeepalived\b.*\bdcmtk\b' <<<"$fields" || fail "Suggests lacks keepalived, dcmtk"
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
section check | grep -q "check: 0" || fail "lbd --config /etc/lb/lb.yaml --check failed"
section man | grep -q "^/usr/share/man/man8/lbctl.8.gz$" || fail "man -w lbctl"
section man | grep -q "^/usr/share/man/man5/lb.yaml.5.gz$" || fail "man -w 5 lb.yaml"
section completions | grep -qE "^complete .*-F _lbctl lbctl$" || fail "the bash completion does not register"
section run | grep -qE "^example-web +l7-http 127.0.0.1 +8080/tcp" || fail "the installed lbd did not serve the packaged config"
section run | grep -qE " root +0 +drain +web-1 \(every service\) +ok" || fail "the installed lbd's audit trail"
section run | grep -q "lbd exit: 0" || fail "the installed lbd did not stop cleanly"
grep -q "dpkg -r: 0" <<<"$out" || fail "dpkg -r failed"
section remove | grep "left behind" && fail "dpkg -r left files behind"
section remove | grep -q "conffile kept" || fail "dpkg -r removed the conffile"
section remove | grep -q "Status: deinstall ok config-files" || fail "after dpkg -r the package should be config-files"
section purge | grep -q "conffile purged" || fail "dpkg --purge kept /etc/lb/lb.yaml"
echo "Debian package: passed"
