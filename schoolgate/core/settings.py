"""Everything besides the filtering rules that the rest of schoolgate needs from the config, as
one typed, immutable :class:`Settings` built once per load (``Policy.settings``).

Each part contributes a reader from its config section to a frozen dataclass, and checks the
section when the config is loaded (every problem reported with file, line and field); the part
then uses what was read, never the raw section:

============================  =======================  ==========================================
``Settings`` field            config section           reader
============================  =======================  ==========================================
``circumvention``             ``circumvention``        :mod:`schoolgate.core.circumvention_settings`
``sanctions``                 ``bans``                 :mod:`schoolgate.core.sanctions`
``wording``                   ``school_name``, ``words``  :mod:`schoolgate.core.words`
``notifications``             ``notifications``        :mod:`schoolgate.core.notification_settings`
``alerts``                    ``alerts``               :mod:`schoolgate.core.alert_settings`
``reports``                   ``reports``              :mod:`schoolgate.core.report_settings`
``retention``                 ``retention``            :mod:`schoolgate.core.retention_settings`
``list_updates``              ``list_updates``         :mod:`schoolgate.core.list_update_settings`
``portal``                    ``portal``               :mod:`schoolgate.core.portal_settings`
``identity_sources``          ``identity``             :mod:`schoolgate.core.identity_settings`
============================  =======================  ==========================================

A ``Settings`` built by hand (tests) gets each section's defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from schoolgate.core.alert_settings import AlertSettings
from schoolgate.core.circumvention_settings import CircumventionSettings
from schoolgate.core.identity_settings import IdentitySources
from schoolgate.core.list_update_settings import ListUpdateSettings
from schoolgate.core.model import Action
from schoolgate.core.monitoring_settings import MonitoringSettings
from schoolgate.core.notification_settings import NotificationSettings
from schoolgate.core.portal_settings import PortalSettings
from schoolgate.core.report_settings import ReportSettings
from schoolgate.core.retention_settings import RetentionSettings
from schoolgate.core.sanctions import SanctionSettings
from schoolgate.core.words import DEFAULT_WORDING, Wording


@dataclass(frozen=True)
class Settings:
    """Everything else the adapters need from the config."""

    config_path: str
    data_dir: str
    database_url: str
    portal_host: str = "schoolgate.internal"
    keep_paths: bool = True
    log_allowed_categories: bool = False
    read_only_blocked_paths: tuple[str, ...] = ()
    read_only_without_interception: Action = Action.BLOCK
    advice: tuple[str, ...] = ()
    circumvention: CircumventionSettings = field(default_factory=CircumventionSettings)
    sanctions: SanctionSettings = field(default_factory=SanctionSettings)
    # The school's name and its words for roles and windows.
    wording: Wording = DEFAULT_WORDING
    notifications: NotificationSettings = field(default_factory=NotificationSettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    reports: ReportSettings = field(default_factory=ReportSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    list_updates: ListUpdateSettings = field(default_factory=ListUpdateSettings)
    portal: PortalSettings = field(default_factory=PortalSettings)
    identity_sources: IdentitySources = field(default_factory=IdentitySources)
    monitoring: MonitoringSettings = field(default_factory=MonitoringSettings)
