#!/bin/sh
# The amino-acid similarity study of the shipped models on far proteins (no MMseqs2 hit in
# the 486k Swiss-Prot set they were trained on); one CPU thread.
set -e
for model in swissprot-performer-bid swissprot-transformer-causal swissprot-performer-causal; do
    OMP_NUM_THREADS=1 proteinperf similarity "$model" data/far_proteins_486k.fasta.gz \
        "benchmarks/results/similarity/$model" --max-seqs 300 --max-length 512 \
        --bootstrap 200 --untrained-seeds 5 --overwrite
done
