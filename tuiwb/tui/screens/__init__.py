"""The workbench's modal screens: the ``?`` help and the contrast-search dialog."""
