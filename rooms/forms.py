from __future__ import annotations

from django import forms
from django.contrib.auth.forms import UserCreationForm
from django.utils.text import slugify

from .models import Room


class SignupForm(UserCreationForm):
    class Meta(UserCreationForm.Meta):
        fields = ("username",)


class RoomCreateForm(forms.Form):
    name = forms.CharField(max_length=120)
    slug = forms.SlugField(max_length=64, required=False, help_text="Leave blank to derive it from the name.")
    is_private = forms.BooleanField(required=False, label="Private (members only)")

    def clean(self) -> dict[str, object]:
        data = super().clean() or {}
        slug = data.get("slug") or slugify(str(data.get("name", "")))[:64]
        if not slug:
            raise forms.ValidationError("Choose a name with at least one letter or digit.")
        if Room.objects.filter(slug=slug).exists():
            self.add_error("slug" if data.get("slug") else "name", "A room with that address already exists.")
        data["slug"] = slug
        return data
