"""The staff pages (Today, cases, the case page, actions, reports, policy).

``routes`` is mounted by :func:`escalations.web.app.create_web_app` before the sign-in and audit
routes, so a page here may take any path (``/`` included). A page handler::

    from escalations.web import audit
    from escalations.web.auth import Role, check_csrf, require, require_case
    from escalations.web.templating import render

    def case_page(request):
        ref = request.path_params["ref"]
        case = ...  # through escalations.views
        user = require_case(request, ref, case.partnership if case else None)  # 404 if not theirs
        audit.record(request, user, "case.view", case_ref=ref)
        return render(request, "pages/case.html.j2", {"case": case})

Templates live in escalations/web/pages/templates/ and extend ``base.html.j2``.
"""

from __future__ import annotations

from starlette.routing import BaseRoute

from escalations.web.pages import actions, case, cases, forms, policy, reports, today

routes: list[BaseRoute] = [*today.routes, *cases.routes, *actions.routes, *forms.routes, *case.routes, *reports.routes,
                           *policy.routes]
