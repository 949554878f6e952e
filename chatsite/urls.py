from django.contrib import admin
from django.urls import include, path

from rooms import views

urlpatterns = [
    path("", views.room_list, name="room_list"),
    path("rooms/<slug:slug>/", views.room_detail, name="room_detail"),
    path("accounts/signup/", views.signup, name="signup"),
    # Before django.contrib.auth's URLs: the throttled log-in answers /accounts/login/.
    path("accounts/login/", views.LoginView.as_view(), name="login"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
    path("healthz", views.healthz, name="healthz"),
    path("favicon.ico", views.favicon, name="favicon"),
    # The HTTP API (/api/v1/, docs/api.md) and the API tokens page.
    path("", include("rooms.api.urls")),
]
