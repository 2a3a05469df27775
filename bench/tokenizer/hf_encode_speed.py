"""HF `tokenizers` single-threaded encode throughput, measured like bench_tokenizer.

For each file: the whole file as one string and line by line (lines keep their newline),
three passes each with a freshly loaded tokenizer: "cold" is the first pass, "warm" the best
of the other two. Throughput is MB per CPU-second of the process (the dev box is shared,
so wall time depends on other jobs). With --dsq FILE (bench_tokenizer's output) it prints
one markdown table with both tools and the dsq/HF ratio, and flags any token-count
mismatch.
Run through compare_hf.sh, which pins HF to one thread.
"""
import argparse
import re
import time

from tokenizers import Tokenizer


def measure(tokenizer_path, encode_all):
    tok = Tokenizer.from_file(tokenizer_path)
    seconds, tokens = [], 0
    for _ in range(3):
        start = time.process_time()  # CPU time of all threads, like bench_tokenizer
        tokens = encode_all(tok)
        seconds.append(time.process_time() - start)
    return tokens, seconds[0], min(seconds[1:])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("tokenizer")
    parser.add_argument("files", nargs="+")
    parser.add_argument("--dsq", help="bench_tokenizer output to compare against")
    args = parser.parse_args()

    dsq = {}
    if args.dsq:
        for line in open(args.dsq):
            f = line.split()  # dsq MODE FILE N tokens cold X MB/s warm Y MB/s
            dsq[(f[1], f[2])] = (int(f[3]), float(f[6]), float(f[9]))

    print("| text | mode | tokens | HF cold MB/s | HF warm MB/s | dsq cold MB/s | dsq warm MB/s | dsq/HF warm |")
    print("|---|---|---|---|---|---|---|---|")
    for path in args.files:
        with open(path, encoding="utf-8", newline="") as f:
            text = f.read()
        megabytes = len(text.encode("utf-8")) / 1e6
        lines = re.findall(r"[^\n]*\n|[^\n]+$", text)  # split on "\n" only, like dsq
        modes = {
            "whole-file": lambda tok: len(tok.encode(text, add_special_tokens=False).ids),
            "per-line": lambda tok: sum(len(tok.encode(l, add_special_tokens=False).ids) for l in lines),
        }
        for mode, encode_all in modes.items():
            tokens, cold, warm = measure(args.tokenizer, encode_all)
            hf_cold, hf_warm = megabytes / cold, megabytes / warm
            row = f"| {path.split('/')[-1]} | {mode} | {tokens} | {hf_cold:.2f} | {hf_warm:.2f}"
            if (mode, path) in dsq:
                dsq_tokens, dsq_cold, dsq_warm = dsq[(mode, path)]
                if dsq_tokens != tokens:
                    row += f" (dsq: {dsq_tokens} tokens!)"
                row += f" | {dsq_cold:.2f} | {dsq_warm:.2f} | {dsq_warm / hf_warm:.1f}x |"
            else:
                row += " | - | - | - |"
            print(row, flush=True)


if __name__ == "__main__":
    main()
