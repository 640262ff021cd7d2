"""What operators see: /metrics, /healthz and /readyz (``status``), the metrics
(``metrics``), log set-up (``logs``), and every bound with its worst case (``limits``).
"""
