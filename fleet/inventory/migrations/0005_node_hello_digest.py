from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('inventory', '0004_sitecache'),
    ]

    operations = [
        migrations.AddField(
            model_name='node',
            name='hello_digest',
            field=models.CharField(blank=True, default='', editable=False, max_length=64),
        ),
    ]
