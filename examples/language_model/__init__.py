"""Language modelling: the Penn Treebank demo and the WikiText-103 recipe's tools."""
