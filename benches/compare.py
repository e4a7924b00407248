#!/usr/bin/env python3
"""Runs criterion bench binaries (from `cargo bench --bench check --no-run`,
one per build to compare) alternately and prints the median of each
benchmark's point estimate per binary, with ratios to the first.
usage: compare.py ROUNDS FILTER NAME=BINARY [NAME=BINARY ...]"""
import re, statistics, subprocess, sys
rounds, filt, bins = int(sys.argv[1]), sys.argv[2], [a.split('=', 1) for a in sys.argv[3:]]
unit = {'ps': 1e-3, 'ns': 1.0, 'µs': 1e3, 'us': 1e3, 'ms': 1e6}
res = {}
for r in range(rounds):
    for name, path in bins:
        out = subprocess.run([path, '--bench', '--noplot', '--warm-up-time', '1', '--measurement-time', '2', filt],
                             capture_output=True, text=True).stdout
        cur = None
        for line in out.splitlines():
            m = re.match(r'^(\S+/\S+)\s*$', line) or re.match(r'^(\S+/\S+)\s+time:', line)
            if m: cur = m.group(1)
            t = re.search(r'time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]', line)
            if t and cur:
                res.setdefault(cur, {}).setdefault(name, []).append(float(t.group(1)) * unit[t.group(2)])
names = [n for n, _ in bins]
print(f"{'benchmark':55}" + ''.join(f'{n:>12}' for n in names) + ''.join(f'{n+"/"+names[0]:>14}' for n in names[1:]))
for b, v in res.items():
    med = {n: statistics.median(v[n]) for n in names if n in v}
    print(f'{b:55}' + ''.join(f'{med.get(n, float("nan")):>10.1f}ns' for n in names)
          + ''.join(f'{med.get(n, float("nan")) / med[names[0]]:>14.2f}' for n in names[1:]))
