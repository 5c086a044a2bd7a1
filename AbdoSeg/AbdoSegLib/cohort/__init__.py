"""Cohorts: many CT scans segmented in one run of ``abdoseg segment``, on one machine or a Ray cluster.

``inputs`` finds the cases (files, folders, DICOM trees, lists) and names them; ``work`` segments one case
(the same code in a local worker process and in a Ray actor); ``table`` writes ``cohort.csv`` and
``cohort.json``; ``runner`` runs the cases (in this process, in worker processes, or through
``ray_runner``) and reports each case's event (``events``).
"""
