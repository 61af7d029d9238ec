"""Pure estimators: numpy arrays or torch tensors in, numbers out. No IO, no globals.

* :mod:`~monitor.estimators.rjsd` - representation JSD and von Neumann entropy
* :mod:`~monitor.estimators.club` - the CLUB mutual-information estimator, its training and files
* :mod:`~monitor.estimators.emi` - EMI, EMID and the EMID upper bound
* :mod:`~monitor.estimators.calibration` - null distributions, p-values, thresholds, bootstrap
"""
