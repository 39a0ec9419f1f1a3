"""Reports for the headteacher, the e-safety team and the network manager.

:mod:`schoolgate.reports.build` computes the figures from the database (a :class:`Report`);
:mod:`schoolgate.reports.render` turns them into self-contained HTML (inline SVG charts, no
external resources) or CSV.
"""

from schoolgate.reports.build import Period, Report, build_report, period_for

__all__ = ["Period", "Report", "build_report", "period_for"]
