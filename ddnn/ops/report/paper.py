"""The papers' own numbers that `ddnn report` puts beside ours, each with its source.

Only what the papers print as numbers (tables, and figures their text states) is here; a curve a
paper only draws is not read off its plot. The hybrid-precision paper's and the exit-placement
paper's figures live with the code that reproduces them (`PAPER` in ddnn/nn/studies/compare.py and
placement.py).
"""

from __future__ import annotations

DDNN = "DDNN paper (Teerapittayanon, McDanel, Kung, ICDCS 2017)"
MVMC = "MVMC (real multi-view multi-camera crops: 6 cameras, car/bus/person, 680 train / 171 test)"

# Table I: local and cloud accuracy % of each local-cloud aggregation pair
TABLE1 = {
    ("MP", "MP"): (95, 91),
    ("MP", "CC"): (98, 98),
    ("AP", "AP"): (86, 98),
    ("AP", "CC"): (75, 96),
    ("CC", "CC"): (85, 94),
    ("AP", "MP"): (88, 93),
    ("MP", "AP"): (89, 97),
    ("CC", "MP"): (77, 87),
    ("CC", "AP"): (80, 94),
}

# Table II: T -> local exit %, overall accuracy %, communication bytes per device per sample
TABLE2 = {
    0.1: (0.00, 96, 140),
    0.3: (0.58, 96, 139),
    0.5: (1.75, 96, 138),
    0.6: (2.92, 96, 136),
    0.7: (22.81, 96, 111),
    0.8: (60.82, 97, 62),
    0.9: (83.04, 96, 34),
    1.0: (100.00, 92, 12),
}
RAW_BYTES = 3072  # Section IV-H: a 32x32 RGB image offloaded raw

FIG8 = (
    "individual devices from under 40 % (device 2) to over 70 % (device 6); the cloud above "
    "the local exit at every count; overall (T = 0.8) about the cloud's, over 20 points above "
    "any single device; from 6 devices to 4, overall drops about 4 points"
)
FIG9 = (
    "T set so that about 75 % of the samples exit locally; offloading the rest to the cloud "
    "gives about 5 points over the local aggregator alone at every filter count; device "
    "layers under 2 KB"
)
FIG10 = (
    "over 95 % overall whichever single device fails; the best device (6) missing costs 3 points"
)
FIG10_FLOOR = 95.0

SEED001_DROP = (
    "the exit-placement paper (analysis of local exit) suggests dropping hopeless samples by "
    "an entropy drop "
    "threshold; it gives no figures"
)

SEED002 = (
    "the learned-router paper (hybrid cloud-edge networks), ImageNet: MobileNetV3 base "
    "(48M FLOPs) and OFA "
    "global, Table 1 hybrid accuracy; entropy thresholding only plotted (Fig. 3), below the "
    "router everywhere"
)
SEED002_ROUTER = {0.9: 71.59, 0.8: 74.61, 0.7: 76.77}  # Table 1, hybrid accuracy %
